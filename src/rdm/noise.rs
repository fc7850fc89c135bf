//! The RDM training noise (docs/method.md §3): coupled timesteps, nested absorbing masks over the
//! maskable slots (target tokens and the final `</s>`), the doubled batch and the loss weights.

pub use crate::data::layout::Example;
use crate::data::{Batch, LossRows};
use crate::rng::philox_u32;
use anyhow::{bail, Result};

/// RDM's reweighting of the per-timestep loss, as the multiplier `T·λ(t)` of each masked token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reweighting {
    /// λ(t) = 1 − (t−1)/T, weight T − t + 1 (the paper's default).
    Linear,
    /// λ(t) = 1/t, weight T/t.
    Reciprocal,
    /// λ(t) = 1, weight T.
    Constant,
}

impl std::str::FromStr for Reweighting {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "linear" => Reweighting::Linear,
            "reciprocal" => Reweighting::Reciprocal,
            "constant" => Reweighting::Constant,
            _ => bail!("unknown reweighting `{s}` (expected linear, reciprocal or constant)"),
        })
    }
}

impl Reweighting {
    pub fn weight(self, t: u32, steps: u32) -> f32 {
        match self {
            Reweighting::Linear => (steps - t + 1) as f32,
            Reweighting::Reciprocal => steps as f32 / t as f32,
            Reweighting::Constant => steps as f32,
        }
    }
}

/// A noised, doubled batch ready for `XlmR::loss_and_grad`.
#[derive(Clone, Debug, PartialEq)]
pub struct Noised {
    /// `2B` rows: the `t_a` copies, then the `t_b` copies.
    pub batch: Batch,
    pub loss: LossRows,
    /// Timestep of each of the `2B` rows.
    pub t: Vec<u32>,
}

/// One draw of the training noise: the counter-based key it comes from and the objective's
/// constants. Every number of the draw is a pure function of `(key, example, index)`, so the CUDA
/// kernel (`kernels/noise.cu`) and this module give the same masks, and a step is reproducible
/// from its key alone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseSpec {
    pub key: u64,
    /// T, the number of diffusion timesteps.
    pub steps: u32,
    pub pad: i32,
    pub mask_id: i32,
    pub reweighting: Reweighting,
    /// Multiplies every weight (e.g. 1/accumulation steps).
    pub scale: f32,
    /// Place of the batch's first example in the global batch of a data-parallel step (0 on one
    /// rank): example `ex` draws from Philox stream `first_example + ex`, so each rank's share
    /// gets the noise its rows would get in the whole batch.
    pub first_example: u64,
}

/// The coupled timesteps (ta ≥ tb) of example `ex`: t1, t2 ~ U{1..T} (Philox numbers 0 and 1 of
/// stream `ex`, scaled by a 32×32-bit multiply: bias below T/2^32), ta = max, tb = min.
pub fn coupled_t(key: u64, ex: usize, steps: u32) -> (u32, u32) {
    let draw = |idx| 1 + ((philox_u32(key, ex as u64, idx) as u64 * steps as u64) >> 32) as u32;
    let (t1, t2) = (draw(0), draw(1));
    (t1.max(t2), t1.min(t2))
}

/// Whether maskable slot `j` of example `ex` is masked in its t_a copy and in its t_b copy
/// (docs/method.md §3): m_a with probability ta/T; m_b keeps a slot of m_a with probability tb/ta (so
/// its marginal is tb/T and m_b ⊆ m_a), or is drawn independently when ta = tb. Slot j uses
/// Philox numbers 2+2j and 3+2j (one Philox block holds both); the 24-bit uniform u is compared
/// with the ratio in integers, so host and device agree exactly.
pub fn slot_masks(key: u64, ex: usize, j: usize, ta: u32, tb: u32, steps: u32) -> (bool, bool) {
    let u = |idx: u64| (philox_u32(key, ex as u64, idx) >> 8) as u64;
    let below = |u: u64, num: u32, den: u32| (u * den as u64) < (num as u64) << 24;
    let (ua, ub) = (u(2 + 2 * j as u64), u(3 + 2 * j as u64));
    let a = below(ua, ta, steps);
    let b = if ta != tb { a && below(ub, tb, ta) } else { below(ub, ta, steps) };
    (a, b)
}

/// The doubled clean batch `[2B, seq]` (rows b and B+b hold example b) and each example's source
/// length, the inputs of `q_sample_flat` / `Backend::q_sample`.
pub fn doubled_batch(rows: &[Example], pad: i32) -> (Batch, Vec<i32>) {
    let b = rows.len();
    let doubled: Vec<Vec<i32>> = (0..2 * b).map(|i| rows[i % b].ids.clone()).collect();
    (Batch::from_rows(&doubled, pad), rows.iter().map(|r| r.src_len as i32).collect())
}

/// Slot `j` of a row can be masked: a target token or the final `</s>`, never the source or padding.
fn maskable(row: &[i32], src_len: i32, pad: i32, j: usize) -> bool {
    j >= src_len as usize && row[j] != pad
}

/// The timesteps and masks of every row of the doubled batch `ids` (`[2B, seq]`, clean).
pub fn draw_masks(ids: &[i32], seq: usize, src_len: &[i32], spec: &NoiseSpec) -> (Vec<u32>, Vec<Vec<bool>>) {
    let b = src_len.len();
    let mut t = vec![0u32; 2 * b];
    let mut masks = vec![Vec::new(); 2 * b];
    for ex in 0..b {
        let row = &ids[ex * seq..][..seq];
        let stream = spec.first_example as usize + ex;
        let (ta, tb) = coupled_t(spec.key, stream, spec.steps);
        let (ma, mb): (Vec<bool>, Vec<bool>) =
            (0..seq)
                .map(|j| {
                    if maskable(row, src_len[ex], spec.pad, j) {
                        slot_masks(spec.key, stream, j, ta, tb, spec.steps)
                    } else {
                        (false, false)
                    }
                })
                .unzip();
        (t[ex], t[b + ex]) = (ta, tb);
        (masks[ex], masks[b + ex]) = (ma, mb);
    }
    (t, masks)
}

/// Writes `<mask>` into the doubled batch `ids` where `masks` say, and returns the loss rows in
/// row-major order with their weights w(t_i)/N_i/(2B)·scale, N_i the number of maskable slots of
/// row i. Loss = Σ_rows weight·CE (docs/method.md §3).
fn apply_masks(ids: &mut [i32], seq: usize, src_len: &[i32], t: &[u32], masks: &[Vec<bool>], spec: &NoiseSpec) -> LossRows {
    let b = src_len.len();
    let n_maskable: Vec<usize> =
        (0..b).map(|ex| (0..seq).filter(|&j| maskable(&ids[ex * seq..][..seq], src_len[ex], spec.pad, j)).count().max(1)).collect();
    let mut loss = LossRows::default();
    for i in 0..2 * b {
        let w = spec.reweighting.weight(t[i], spec.steps) / n_maskable[i % b] as f32 / (2 * b) as f32 * spec.scale;
        for (j, _) in masks[i].iter().enumerate().filter(|(_, &m)| m) {
            let flat = i * seq + j;
            loss.rows.push(flat as i32);
            loss.targets.push(ids[flat]);
            loss.weights.push(w);
            ids[flat] = spec.mask_id;
        }
    }
    loss
}

/// The reference of `Backend::q_sample` (and the CPU backend's op): noises the doubled clean
/// batch `ids` (`[2B, seq]`; `src_len[b]` is example b's source length) in place and returns
/// the masked slots, their clean ids and their weights.
pub fn q_sample_flat(ids: &mut [i32], seq: usize, src_len: &[i32], spec: &NoiseSpec) -> LossRows {
    let (t, masks) = draw_masks(ids, seq, src_len, spec);
    apply_masks(ids, seq, src_len, &t, &masks, spec)
}

/// Builds the doubled noised batch and the weighted loss rows from given timesteps and masks
/// (`2B` of each; row `i` and `B + i` share the clean sequence `rows[i]`).
/// Loss = (1/2B)·Σ_i w(t_i)/N_i · Σ_{j masked} CE, N_i = number of maskable slots of row i;
/// `scale` multiplies every weight (e.g. 1/accumulation steps).
#[allow(clippy::too_many_arguments)]
pub fn build_noised(
    rows: &[Example],
    t: &[u32],
    masks: &[Vec<bool>],
    pad: i32,
    mask_id: i32,
    steps: u32,
    rw: Reweighting,
    scale: f32,
) -> Noised {
    let (mut batch, src_len) = doubled_batch(rows, pad);
    let spec = NoiseSpec { key: 0, steps, pad, mask_id, reweighting: rw, scale, first_example: 0 };
    let padded: Vec<Vec<bool>> = masks.iter().map(|m| (0..batch.seq).map(|j| m.get(j).copied().unwrap_or(false)).collect()).collect();
    let loss = apply_masks(&mut batch.ids, batch.seq, &src_len, t, &padded, &spec);
    Noised { batch, loss, t: t.to_vec() }
}

/// The whole draw on the host: `doubled_batch`, then `q_sample_flat`.
pub fn q_sample_coupled(rows: &[Example], spec: &NoiseSpec) -> Noised {
    let (mut batch, src_len) = doubled_batch(rows, spec.pad);
    let (t, masks) = draw_masks(&batch.ids, batch.seq, &src_len, spec);
    let loss = apply_masks(&mut batch.ids, batch.seq, &src_len, &t, &masks, spec);
    Noised { batch, loss, t }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Example> {
        vec![Example { ids: vec![0, 10, 11, 12, 20, 21, 22, 23, 2], src_len: 4 }, Example { ids: vec![0, 10, 11, 20, 21, 2], src_len: 3 }]
    }

    fn spec(key: u64) -> NoiseSpec {
        NoiseSpec { key, steps: 50, pad: 1, mask_id: 99, reweighting: Reweighting::Linear, scale: 1.0, first_example: 0 }
    }

    #[test]
    fn masks_are_nested_and_only_on_maskable_slots() {
        let (batch, src_len) = doubled_batch(&rows(), 1);
        let mut nested_draws = 0;
        for key in 0..200 {
            let (t, m) = draw_masks(&batch.ids, batch.seq, &src_len, &spec(key));
            for i in 0..2 {
                assert!(t[i] >= t[2 + i] && t[2 + i] >= 1 && t[i] <= 50);
                for (j, (&a, &b)) in m[i].iter().zip(&m[2 + i]).enumerate() {
                    if j < rows()[i].src_len || j >= rows()[i].ids.len() {
                        assert!(!a && !b, "source or padding slot masked");
                    }
                    if t[i] != t[2 + i] && b {
                        assert!(a, "m_b must be a subset of m_a");
                        nested_draws += 1;
                    }
                }
            }
        }
        assert!(nested_draws > 50, "the subset check ran on only {nested_draws} slots");
    }

    #[test]
    fn marginal_rates_follow_t_over_big_t_and_timesteps_are_uniform() {
        // Over many keys, the fraction of masked slots among rows with timestep t is ≈ t/T, for
        // the t_a copies and for the nested t_b copies alike; t1, t2 ~ U{1..T} gives
        // P(ta = t) = (2t-1)/T².
        let long = vec![Example { ids: (0..200).map(|i| if i == 0 { 0 } else { 5 + i }).collect(), src_len: 1 }];
        let (batch, src_len) = doubled_batch(&long, 1);
        let (mut num, mut den) = (0.0f64, 0.0f64);
        let mut ta_hist = [0u32; 51];
        let keys = 2000;
        for key in 0..keys {
            let (t, m) = draw_masks(&batch.ids, batch.seq, &src_len, &spec(key * 7919));
            ta_hist[t[0] as usize] += 1;
            for i in 0..2 {
                let masked = m[i].iter().filter(|&&x| x).count() as f64;
                num += masked - 199.0 * t[i] as f64 / 50.0;
                den += 199.0;
            }
        }
        assert!((num / den).abs() < 0.005, "mean deviation {}", num / den);
        let low: u32 = ta_hist[1..=25].iter().sum();
        // P(ta ≤ 25) = (25/50)² = 1/4.
        let frac = low as f64 / keys as f64;
        assert!((frac - 0.25).abs() < 0.03, "P(ta <= 25) = {frac}");
    }

    #[test]
    fn a_draw_is_a_function_of_its_key() {
        let r = rows();
        let a = q_sample_coupled(&r, &spec(42));
        assert_eq!(a, q_sample_coupled(&r, &spec(42)));
        let differ = (43..60).filter(|&k| q_sample_coupled(&r, &spec(k)) != a).count();
        assert!(differ > 10, "only {differ} of 17 other keys changed the draw");
        // The flat form (the backends' op) gives the same batch and loss rows.
        let (mut batch, src_len) = doubled_batch(&r, 1);
        let loss = q_sample_flat(&mut batch.ids, batch.seq, &src_len, &spec(42));
        assert_eq!((batch, loss), (a.batch, a.loss));
    }

    #[test]
    fn draws_match_the_pinned_known_answer() {
        // The CUDA kernel must draw these same masks (scripts/emulate-kernels pins the same
        // string; a change here is a change to kernels/noise.cu too). 'B' both copies masked,
        // 'a' only the t_a copy, '.' neither.
        let key = 0x0123_4567_89ab_cdef;
        for (ex, want_t, want) in [(0, (39, 36), "BBB.BBaBBBBaBB...BBBBBBB"), (3, (16, 13), "a.B.....B...B.....B.....")] {
            let (ta, tb) = coupled_t(key, ex, 50);
            assert_eq!((ta, tb), want_t);
            let got: String = (0..24)
                .map(|j| match slot_masks(key, ex, j, ta, tb, 50) {
                    (true, true) => 'B',
                    (true, false) => 'a',
                    (false, true) => 'b',
                    (false, false) => '.',
                })
                .collect();
            assert_eq!(got, want, "example {ex}");
        }
    }

    #[test]
    fn weights_follow_the_formula() {
        let r = rows();
        let t = vec![50, 10, 1, 10];
        let masks: Vec<Vec<bool>> = (0..4).map(|i| (0..r[i % 2].ids.len()).map(|j| j == r[i % 2].ids.len() - 1).collect()).collect();
        let n = build_noised(&r, &t, &masks, 1, 99, 50, Reweighting::Linear, 1.0);
        assert_eq!(n.batch.batch, 4);
        assert_eq!(n.loss.rows.len(), 4);
        // Row 0: t=50 → weight 1, 5 maskable slots, 2B = 4.
        assert!((n.loss.weights[0] - 1.0 / 5.0 / 4.0).abs() < 1e-7);
        // Row 2 (copy of row 0): t=1 → weight 50.
        assert!((n.loss.weights[2] - 50.0 / 5.0 / 4.0).abs() < 1e-7);
        assert_eq!(n.batch.ids[n.loss.rows[0] as usize], 99);
        assert_eq!(n.loss.targets[0], 2);
    }

    #[test]
    fn a_share_with_its_first_example_draws_what_the_whole_batch_draws_for_it() {
        let whole = rows();
        for key in 0..50 {
            let (batch, src_len) = doubled_batch(&whole, 1);
            let (t, m) = draw_masks(&batch.ids, batch.seq, &src_len, &spec(key));
            // The second example alone, as rank 1 of two would hold it (its own padded length).
            let share = &whole[1..];
            let (b1, s1) = doubled_batch(share, 1);
            let (t1, m1) = draw_masks(&b1.ids, b1.seq, &s1, &NoiseSpec { first_example: 1, ..spec(key) });
            assert_eq!((t1[0], t1[1]), (t[1], t[3]), "key {key}: timesteps");
            assert_eq!(m1[0][..], m[1][..b1.seq], "key {key}: t_a mask");
            assert_eq!(m1[1][..], m[3][..b1.seq], "key {key}: t_b mask");
            assert!(m[1][b1.seq..].iter().all(|&x| !x), "padding is never masked");
        }
    }
}
