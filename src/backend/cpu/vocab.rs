//! The weighted softmax cross-entropy over the vocabulary (loss and dlogits in place); the CPU
//! twin of kernels/vocab.cu.

use super::simd;
use crate::backend::VocabShape;
use rayon::prelude::*;

fn row_lse(row: &[f32]) -> (f32, f32) {
    let (mx, s) = simd::max_and_sum_exp(row);
    (mx, mx + s.ln() as f32)
}

simd::multiversion! {
    /// dlogits of one row in place: `w·(softmax − smoothed one-hot)`, 0 past `valid`.
    fn ce_grad_row(row: &mut [f32], valid: usize, lse: f32, ls: f32, t: usize, w: f32) {
        let off = ls / valid as f32;
        let (head, pad) = row.split_at_mut(valid);
        for g in head.iter_mut() {
            *g = (simd::exp(*g - lse) - off) * w;
        }
        head[t] -= (1.0 - ls) * w;
        pad.fill(0.0);
    }
}

pub fn cross_entropy_fwd_bwd(logits: &mut [f32], targets: &[i32], weights: &[f32], shape: VocabShape, label_smoothing: f32) -> Vec<f32> {
    let VocabShape { rows, vocab, valid } = shape;
    let ls = label_smoothing;
    logits[..rows * vocab]
        .par_chunks_mut(vocab)
        .enumerate()
        .map(|(r, row)| {
            let (_, lse) = row_lse(&row[..valid]);
            let t = targets[r] as usize;
            assert!(t < valid, "target id {t} outside the vocabulary of {valid}");
            let nll = lse - row[t];
            let loss = if ls > 0.0 {
                let mean_nll = row[..valid].iter().map(|&v| (lse - v) as f64).sum::<f64>() / valid as f64;
                (1.0 - ls) * nll + ls * mean_nll as f32
            } else {
                nll
            };
            ce_grad_row(row, valid, lse, ls, t, weights[r]);
            loss
        })
        .collect()
}

/// log-softmax over `row[..valid]` with `forbid` excluded.
pub fn masked_log_softmax(row: &[f32], valid: usize, forbid: &[i32]) -> Vec<f32> {
    let mut r: Vec<f32> = row[..valid].to_vec();
    for &f in forbid {
        if (f as usize) < valid {
            r[f as usize] = f32::NEG_INFINITY;
        }
    }
    let (_, lse) = row_lse(&r);
    r.iter().map(|&v| v - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_gradient_is_softmax_minus_onehot() {
        let mut l = vec![1.0, 2.0, 0.5, 9.0, 3.0, 1.0, 1.0, 9.0];
        let loss = cross_entropy_fwd_bwd(&mut l, &[1, 0], &[2.0, 1.0], VocabShape { rows: 2, vocab: 4, valid: 3 }, 0.0);
        let z: f32 = [1.0f32, 2.0, 0.5].iter().map(|v| v.exp()).sum();
        assert!((loss[0] - (z.ln() - 2.0)).abs() < 1e-6);
        assert!((l[1] - 2.0 * ((2.0f32).exp() / z - 1.0)).abs() < 1e-6);
        assert_eq!(l[3], 0.0);
        let s: f32 = l[4..7].iter().sum();
        assert!(s.abs() < 1e-6);
    }
}
