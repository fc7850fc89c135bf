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

/// ZeRO-1's layout: the trainable parameters flattened in order (`offsets[i]` is parameter i's
/// first element), padded with zeros to `world · shard` elements; rank r owns elements
/// `r·shard .. (r+1)·shard` (its f32 masters and Adam moments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    pub offsets: Vec<usize>,
    pub lens: Vec<usize>,
    /// Elements of the flattened parameters, without the padding.
    pub total: usize,
    /// Elements per rank.
    pub shard: usize,
    pub world: usize,
}

impl ShardLayout {
    pub fn new(lens: &[usize], world: usize) -> ShardLayout {
        let offsets = lens.iter().scan(0, |at, &n| Some(std::mem::replace(at, *at + n))).collect();
        let total = lens.iter().sum::<usize>();
        ShardLayout { offsets, lens: lens.to_vec(), total, shard: total.div_ceil(world).max(1), world }
    }

    /// The elements rank `rank` owns, within the padded flat vector.
    pub fn range(&self, rank: usize) -> Range<usize> {
        rank * self.shard..(rank + 1) * self.shard
    }

    /// Rank `rank`'s shard of per-parameter values (the padding is zeros).
    pub fn take_shard(&self, parts: &[Vec<f32>], rank: usize) -> Vec<f32> {
        let mut flat: Vec<f32> = parts.iter().flatten().copied().collect();
        flat.resize(self.world * self.shard, 0.0);
        flat[self.range(rank)].to_vec()
    }

    /// Where parameter `i` meets rank `rank`'s shard: the range of its own elements inside the
    /// shard, and where in the shard they go; `None` when it lies wholly in other shards.
    pub fn overlap(&self, i: usize, rank: usize) -> Option<(Range<usize>, usize)> {
        let (own, shard) = (self.offsets[i]..self.offsets[i] + self.lens[i], self.range(rank));
        let (start, end) = (own.start.max(shard.start), own.end.min(shard.end));
        (start < end).then(|| (start - own.start..end - own.start, start - shard.start))
    }

    /// The per-parameter values of the gathered flat vector.
    pub fn split(&self, flat: &[f32]) -> Vec<Vec<f32>> {
        self.offsets.iter().zip(&self.lens).map(|(&o, &n)| flat[o..o + n].to_vec()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_cut_the_flat_vector_as_take_shard_does() {
        let lens = [5, 1, 7, 3];
        let parts: Vec<Vec<f32>> = lens.iter().enumerate().map(|(i, &n)| (0..n).map(|j| (i * 100 + j) as f32).collect()).collect();
        for world in 1..6 {
            let layout = ShardLayout::new(&lens, world);
            for rank in 0..world {
                let mut shard = vec![0.0; layout.shard];
                for (i, p) in parts.iter().enumerate() {
                    if let Some((src, at)) = layout.overlap(i, rank) {
                        shard[at..at + src.len()].copy_from_slice(&p[src]);
                    }
                }
                assert_eq!(shard, layout.take_shard(&parts, rank), "world {world}, rank {rank}");
            }
        }
    }

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

    #[test]
    fn shard_layout_covers_the_parameters_once() {
        let parts = vec![vec![1.0, 2.0, 3.0], vec![4.0], vec![5.0, 6.0, 7.0, 8.0, 9.0]];
        let layout = ShardLayout::new(&[3, 1, 5], 2);
        assert_eq!((layout.offsets.clone(), layout.total, layout.shard), (vec![0, 3, 4], 9, 5));
        let shards: Vec<Vec<f32>> = (0..2).map(|r| layout.take_shard(&parts, r)).collect();
        assert_eq!(shards, vec![vec![1.0, 2.0, 3.0, 4.0, 5.0], vec![6.0, 7.0, 8.0, 9.0, 0.0]]);
        assert_eq!(layout.split(&shards.concat()), parts);
        assert_eq!(ShardLayout::new(&[], 3).shard, 1, "never an empty shard (NCCL counts are positive)");
    }
}
