//! The RDM training noise (method.md §3): coupled timesteps, nested absorbing masks over the
//! maskable slots (target tokens and the final `</s>`), the doubled batch and the loss weights.

pub use crate::data::layout::Example;
use crate::model::{Batch, LossRows};
use crate::rng::Rng;
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

/// Draws the coupled pair of timesteps and nested masks for every row (method.md §3):
/// t1, t2 ~ U{1..T}, ta = max, tb = min; m_a masks each maskable slot with probability ta/T;
/// m_b keeps a slot of m_a with probability tb/ta (so it has marginal tb/T and m_b ⊆ m_a),
/// or is drawn independently when ta = tb.
pub fn coupled_masks(rows: &[Example], pad: i32, steps: u32, rng: &mut Rng) -> (Vec<u32>, Vec<Vec<bool>>) {
    let b = rows.len();
    let mut t = vec![0u32; 2 * b];
    let mut masks = vec![Vec::new(); 2 * b];
    for (i, r) in rows.iter().enumerate() {
        let t1 = rng.int_in(1, steps as u64) as u32;
        let t2 = rng.int_in(1, steps as u64) as u32;
        let (ta, tb) = (t1.max(t2), t1.min(t2));
        let maskable = |j: usize| j >= r.src_len && r.ids[j] != pad;
        let pa = ta as f32 / steps as f32;
        let ma: Vec<bool> = (0..r.ids.len()).map(|j| maskable(j) && rng.uniform() < pa).collect();
        let mb: Vec<bool> = if ta != tb {
            let drop_frac = (ta - tb) as f32 / ta as f32;
            (0..r.ids.len()).map(|j| ma[j] && rng.uniform() > drop_frac).collect()
        } else {
            (0..r.ids.len()).map(|j| maskable(j) && rng.uniform() < pa).collect()
        };
        t[i] = ta;
        t[b + i] = tb;
        masks[i] = ma;
        masks[b + i] = mb;
    }
    (t, masks)
}

/// Builds the doubled noised batch and the weighted loss rows from given timesteps and masks
/// (`2B` of each; row `i` and `B + i` share the clean sequence `rows[i]`).
/// Loss = (1/2B)·Σ_i w(t_i)/N_i · Σ_{j masked} CE, N_i = number of maskable slots of row i;
/// `scale` multiplies every weight (e.g. 1/accumulation steps).
#[allow(clippy::too_many_arguments)]
pub fn build_noised(rows: &[Example], t: &[u32], masks: &[Vec<bool>], pad: i32, mask_id: i32, steps: u32, rw: Reweighting, scale: f32) -> Noised {
    let b = rows.len();
    let doubled: Vec<Vec<i32>> = (0..2 * b).map(|i| rows[i % b].ids.clone()).collect();
    let mut batch = Batch::from_rows(&doubled, pad);
    let mut loss = LossRows::default();
    for i in 0..2 * b {
        let r = &rows[i % b];
        let n_maskable = (r.src_len..r.ids.len()).filter(|&j| r.ids[j] != pad).count().max(1);
        let w = rw.weight(t[i], steps) / n_maskable as f32 / (2 * b) as f32 * scale;
        for (j, &m) in masks[i].iter().enumerate() {
            if m {
                let flat = i * batch.seq + j;
                loss.rows.push(flat as i32);
                loss.targets.push(r.ids[j]);
                loss.weights.push(w);
                batch.ids[flat] = mask_id;
            }
        }
    }
    Noised { batch, loss, t: t.to_vec() }
}

/// `coupled_masks` followed by `build_noised`.
pub fn q_sample_coupled(rows: &[Example], pad: i32, mask_id: i32, steps: u32, rw: Reweighting, scale: f32, rng: &mut Rng) -> Noised {
    let (t, masks) = coupled_masks(rows, pad, steps, rng);
    build_noised(rows, &t, &masks, pad, mask_id, steps, rw, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Example> {
        vec![
            Example { ids: vec![0, 10, 11, 12, 20, 21, 22, 23, 2], src_len: 4 },
            Example { ids: vec![0, 10, 11, 20, 21, 2], src_len: 3 },
        ]
    }

    #[test]
    fn masks_are_nested_and_only_on_maskable_slots() {
        let mut rng = Rng::new(5, 0);
        for _ in 0..200 {
            let (t, m) = coupled_masks(&rows(), 1, 50, &mut rng);
            for i in 0..2 {
                assert!(t[i] >= t[2 + i] && t[2 + i] >= 1 && t[i] <= 50);
                for j in 0..rows()[i].ids.len() {
                    if j < rows()[i].src_len {
                        assert!(!m[i][j] && !m[2 + i][j]);
                    }
                    if t[i] != t[2 + i] && m[2 + i][j] {
                        assert!(m[i][j], "m_b must be a subset of m_a");
                    }
                }
            }
        }
    }

    #[test]
    fn marginal_mask_rates_follow_t_over_big_t() {
        // With many draws, the fraction of masked slots among rows with timestep t is ≈ t/T,
        // for the t_a copies and for the nested t_b copies alike.
        let long = vec![Example { ids: (0..200).map(|i| if i == 0 { 0 } else { 5 + i }).collect(), src_len: 1 }];
        let mut rng = Rng::new(9, 1);
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for _ in 0..400 {
            let (t, m) = coupled_masks(&long, 1, 50, &mut rng);
            for i in 0..2 {
                let masked = m[i].iter().filter(|&&x| x).count() as f64;
                num += masked - 199.0 * t[i] as f64 / 50.0;
                den += 199.0;
            }
        }
        assert!((num / den).abs() < 0.01, "mean deviation {}", num / den);
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
}
