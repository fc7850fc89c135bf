//! The per-example update rules of one denoising step (docs/method.md §4.3, §4.3b), on the target slots
//! of one canvas: the CPU twin of the re-masking kernel and the host decoding loop's rule. The
//! batch loop, the denoiser and the random streams live in `diffusion::sampler`.

use crate::rng::philox_gumbel;

/// Which decoded slots the lowest-confidence set may send back to `<mask>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remask {
    /// Every decoded slot in the lowest set.
    Uncond,
    /// Only a decoded slot whose token the model predicts again with a lower score.
    Cond,
}

/// Score given to every non-target position in the reference's ranking. Only target slots are
/// ranked here, which is the same as long as every ranked target score stays below it (log-probs
/// are <= 0; Gumbel noise would need a scale near 50 to reach it).
pub const NON_TARGET_SCORE: f32 = 1000.0;

/// The target slots of one canvas: their tokens, the score each token had when it was last
/// committed (−inf while masked) and which slots are masked.
#[derive(Clone, Debug, PartialEq)]
pub struct Slots {
    pub tokens: Vec<i32>,
    pub scores: Vec<f32>,
    pub masked: Vec<bool>,
}

impl Slots {
    pub fn all_masked(len: usize, mask_id: i32) -> Self {
        Slots { tokens: vec![mask_id; len], scores: vec![f32::NEG_INFINITY; len], masked: vec![true; len] }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    fn commit(&mut self, j: usize, token: i32, score: f32) {
        self.tokens[j] = token;
        self.scores[j] = score;
        self.masked[j] = false;
    }

    fn remask(&mut self, j: usize, mask_id: i32) {
        self.tokens[j] = mask_id;
        self.scores[j] = f32::NEG_INFINITY;
        self.masked[j] = true;
    }
}

/// Ranking noise of `stochastic<c>` for one canvas at one step: Gumbel noise number j (the
/// slot) of Philox stream (`seed`, `stream`), times `scale` (`f32(c·rate)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankNoise {
    pub scale: f32,
    pub seed: u64,
    pub stream: u64,
}

/// The scores the top-k ranks: the picks' log-probs, plus the ranking noise when there is any.
pub fn ranked(score: &[f32], noise: Option<RankNoise>) -> Vec<f32> {
    match noise {
        None => score.to_vec(),
        Some(n) => score.iter().enumerate().map(|(j, &v)| v + n.scale * philox_gumbel(n.seed, n.stream, j as u64)).collect(),
    }
}

/// The slots whose ranked score is strictly below the (k+1)-th smallest one. Ties at the cutoff
/// stay out, so the set can hold fewer than `k` slots; `k >= len` puts the cutoff at the
/// non-target score, i.e. every slot is in.
pub fn lowest_set(ranked: &[f32], k: usize) -> Vec<bool> {
    let cutoff = if k < ranked.len() {
        let mut sorted = ranked.to_vec();
        sorted.sort_by(f32::total_cmp);
        sorted[k]
    } else {
        NON_TARGET_SCORE
    };
    ranked.iter().map(|&r| r < cutoff).collect()
}

/// One reparameterized step given the current pick (`cur_tok`, `cur_score`) at every target slot
/// and the lowest set. A masked slot outside the set takes the pick; a decoded slot outside it
/// keeps its token and stored score even if the pick changed. Inside the set a masked slot stays
/// masked; a decoded one is re-masked always (`Uncond`), or (`Cond`) only when the pick repeats
/// its token with a strictly lower score.
pub fn reparam_update(slots: &mut Slots, cur_tok: &[i32], cur_score: &[f32], lowest: &[bool], remask: Remask, mask_id: i32) {
    for j in 0..slots.len() {
        let to_mask = lowest[j]
            && match remask {
                Remask::Uncond => true,
                Remask::Cond => slots.masked[j] || (cur_tok[j] == slots.tokens[j] && cur_score[j] < slots.scores[j]),
            };
        if to_mask {
            slots.remask(j, mask_id);
        } else if slots.masked[j] {
            slots.commit(j, cur_tok[j], cur_score[j]);
        }
    }
}

/// Commits picks at the given slots (the `cmlm` and `ar` strategies, which never re-mask).
pub fn fill(slots: &mut Slots, at: &[usize], tok: &[i32], score: &[f32]) {
    for (i, &j) in at.iter().enumerate() {
        slots.commit(j, tok[i], score[i]);
    }
}

/// The masked slots a confidence-threshold step commits: every one ranked at least at `cut`, or,
/// when none is, the best-ranked one (the first on ties; NaN ranks lowest), so that every step
/// commits at least one slot while any is masked.
pub fn threshold_commits(masked: &[bool], ranked: &[f32], cut: f32) -> Vec<usize> {
    let open: Vec<usize> = (0..masked.len()).filter(|&j| masked[j]).collect();
    let sure: Vec<usize> = open.iter().copied().filter(|&j| ranked[j] >= cut).collect();
    if !sure.is_empty() {
        return sure;
    }
    let key = |j: usize| if ranked[j].is_nan() { f32::NEG_INFINITY } else { ranked[j] };
    let mut best: Option<usize> = None;
    for &j in &open {
        if best.is_none_or(|b| key(j) > key(b)) {
            best = Some(j);
        }
    }
    best.into_iter().collect()
}

/// The first masked slot (`ar`'s next position), if any.
pub fn first_masked(slots: &Slots) -> Option<usize> {
    slots.masked.iter().position(|&m| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i32 = 9;

    #[test]
    fn threshold_commits_every_sure_slot_or_else_the_most_confident_one() {
        let masked = [true, false, true, true, true];
        // Slot 1 is decoded: never committed again, however sure.
        assert_eq!(threshold_commits(&masked, &[0.95, 0.99, 0.5, 0.9, 0.91], 0.9), [0, 3, 4]);
        // None reaches 0.97: only the most confident masked slot, the first of a tie.
        assert_eq!(threshold_commits(&masked, &[0.6, 0.99, 0.7, 0.7, 0.2], 0.97), [2]);
        assert_eq!(threshold_commits(&[false, false], &[0.1, 0.2], 0.5), Vec::<usize>::new());
        // A NaN confidence never passes the threshold and loses the fallback.
        assert_eq!(threshold_commits(&[true, true], &[f32::NAN, 0.1], 0.5), [1]);
    }

    #[test]
    fn lowest_set_is_strict_so_ties_at_the_cutoff_stay_out() {
        // sorted: -3 -2 -2 -1; k = 2 → cutoff = -2, only -3 is strictly lower.
        assert_eq!(lowest_set(&[-2.0, -1.0, -3.0, -2.0], 2), [false, false, true, false]);
        assert_eq!(lowest_set(&[-2.0, -1.0, -3.0, -2.5], 2), [false, false, true, true]);
        assert_eq!(lowest_set(&[-2.0, -1.0], 0), [false, false]);
        assert_eq!(lowest_set(&[-2.0, -1.0], 2), [true, true]);
    }

    #[test]
    fn uncond_remasks_decoded_slots_and_keeps_stored_scores_outside_the_set() {
        let mut s = Slots {
            tokens: vec![M, 4, 5, M],
            scores: vec![f32::NEG_INFINITY, -0.5, -0.2, f32::NEG_INFINITY],
            masked: vec![true, false, false, true],
        };
        // Slot 1 (decoded) in the set → masked; slot 2 keeps 5/-0.2 although the pick is 7;
        // slot 0 masked in the set stays masked; slot 3 takes the pick.
        reparam_update(&mut s, &[3, 4, 7, 8], &[-1.0, -0.9, -0.1, -0.3], &[true, true, false, false], Remask::Uncond, M);
        assert_eq!(s.tokens, [M, M, 5, 8]);
        assert_eq!(s.scores, [f32::NEG_INFINITY, f32::NEG_INFINITY, -0.2, -0.3]);
        assert_eq!(s.masked, [true, true, false, false]);
    }

    #[test]
    fn cond_remasks_only_a_repeated_token_with_a_lower_score() {
        let mut s =
            Slots { tokens: vec![4, 5, 6, M], scores: vec![-0.5, -0.5, -0.5, f32::NEG_INFINITY], masked: vec![false, false, false, true] };
        // slot 0: same token, lower score → re-masked; slot 1: other token → kept;
        // slot 2: same token, equal score → kept; slot 3: masked in the set → stays masked.
        reparam_update(&mut s, &[4, 7, 6, 2], &[-0.6, -2.0, -0.5, -0.1], &[true, true, true, true], Remask::Cond, M);
        assert_eq!(s.tokens, [M, 5, 6, M]);
        assert_eq!(s.scores[1..3], [-0.5, -0.5]);
        assert_eq!(s.masked, [true, false, false, true]);
    }
}
