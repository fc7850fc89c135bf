//! How a global micro-batch is shared among the ranks: contiguous runs of rows balanced by
//! tokens, in the batch's own order, so that the ranks together hold exactly the rows one process
//! would train on, each at its place in the whole batch.

use std::ops::Range;

/// The rows of a batch with `tokens[i]` tokens in row `i` that rank `rank` of `world` trains on:
/// row `i` goes to the rank whose equal share of the batch's tokens holds the row's first token
/// (`⌊before(i)·world/total⌋`). Every row goes to exactly one rank; a rank may get no row when the
/// batch has fewer rows than ranks (it then adds nothing to the sums).
pub fn share(tokens: &[usize], world: usize, rank: usize) -> Range<usize> {
    assert!(rank < world, "rank {rank} of {world}");
    let total: u128 = tokens.iter().map(|&t| t as u128).sum();
    if total == 0 {
        // No tokens to balance: split by rows.
        let n = tokens.len();
        return n * rank / world..n * (rank + 1) / world;
    }
    let mut before = 0u128;
    let (mut lo, mut hi) = (tokens.len(), tokens.len());
    for (i, &t) in tokens.iter().enumerate() {
        let owner = ((before * world as u128) / total) as usize;
        if owner == rank && lo == tokens.len() {
            lo = i;
        }
        if owner > rank {
            hi = i;
            break;
        }
        before += t as u128;
    }
    lo.min(hi)..hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_in_order_and_balance_tokens() {
        let mut rng = crate::rng::Rng::new(3, 0);
        for _ in 0..300 {
            let n = rng.int_in(0, 20) as usize;
            let tokens: Vec<usize> = (0..n).map(|_| 1 + rng.int_in(0, 30) as usize).collect();
            let world = 1 + rng.int_in(0, 5) as usize;
            let mut next = 0;
            for rank in 0..world {
                let r = share(&tokens, world, rank);
                assert_eq!(r.start, next, "{tokens:?} over {world}: rank {rank} starts where rank {} ended", rank.max(1) - 1);
                next = r.end;
                // A share never exceeds its equal part by more than one row.
                let total: usize = tokens.iter().sum();
                let mine: usize = tokens[r.clone()].iter().sum();
                let longest = tokens.iter().copied().max().unwrap_or(0);
                assert!(mine * world <= total + longest * world, "{tokens:?} over {world}: rank {rank} holds {mine} tokens");
            }
            assert_eq!(next, n, "{tokens:?} over {world}: every row has a rank");
        }
    }

    #[test]
    fn even_rows_split_evenly() {
        let tokens = [8; 8];
        assert_eq!((0..2).map(|r| share(&tokens, 2, r)).collect::<Vec<_>>(), vec![0..4, 4..8]);
        assert_eq!((0..4).map(|r| share(&tokens, 4, r)).collect::<Vec<_>>(), vec![0..2, 2..4, 4..6, 6..8]);
        assert_eq!(share(&tokens, 1, 0), 0..8);
        // One long row and three short ones: the long row is half the tokens.
        assert_eq!((0..2).map(|r| share(&[30, 10, 10, 10], 2, r)).collect::<Vec<_>>(), vec![0..1, 1..4]);
        // Fewer rows than ranks.
        assert_eq!((0..3).map(|r| share(&[5], 3, r)).collect::<Vec<_>>(), vec![0..1, 1..1, 1..1]);
    }
}
