//! Passes over the vocabulary: weighted softmax cross-entropy (loss and dlogits in place) and the
//! sampler's per-row pick (argmax or Gumbel-max sample, and the log-prob of the pick).

use crate::backend::{unpack_seed, RowStats};
use crate::rng::philox_gumbel;
use rayon::prelude::*;

fn row_lse(row: &[f32]) -> (f32, f32) {
    let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = row.iter().map(|&v| ((v - mx) as f64).exp()).sum();
    (mx, mx + s.ln() as f32)
}

#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_fwd_bwd(
    logits: &mut [f32],
    targets: &[i32],
    weights: &[f32],
    rows: usize,
    vocab: usize,
    valid: usize,
    label_smoothing: f32,
) -> Vec<f32> {
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
            let w = weights[r];
            for (c, g) in row.iter_mut().enumerate() {
                if c >= valid {
                    *g = 0.0;
                    continue;
                }
                let p = (*g - lse).exp();
                let mut d = p - ls / valid as f32;
                if c == t {
                    d -= 1.0 - ls;
                }
                *g = d * w;
            }
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

/// The CPU twin of `Backend::vocab_pick`; `gumbel` is the packed `(seeds, streams)` pair of
/// `backend::pack_gumbel`.
pub fn vocab_pick(
    logits: &[f32],
    rows: usize,
    vocab: usize,
    valid: usize,
    forbid: &[i32],
    temperature: f32,
    gumbel: Option<(&[i32], &[i32])>,
) -> RowStats {
    let noise = gumbel.map(|(seeds, streams)| move |r: usize| (unpack_seed(seeds, r), streams[r] as u32 as u64));
    let picks: Vec<(i32, f32)> = logits[..rows * vocab]
        .par_chunks(vocab)
        .enumerate()
        .map(|(r, row)| {
            let allowed = |c: usize| !forbid.contains(&(c as i32));
            let (mx, lse) = {
                let mut mx = f32::NEG_INFINITY;
                for (c, &x) in row[..valid].iter().enumerate() {
                    if allowed(c) {
                        mx = mx.max(x);
                    }
                }
                let s: f64 = (0..valid).filter(|&c| allowed(c)).map(|c| ((row[c] - mx) as f64).exp()).sum();
                (mx, mx + s.ln() as f32)
            };
            let _ = mx;
            let mut best = (f32::NEG_INFINITY, 0usize);
            for (c, &x) in row[..valid].iter().enumerate() {
                if !allowed(c) {
                    continue;
                }
                let key = match noise {
                    None => x,
                    Some(stream_of) => {
                        let (seed, stream) = stream_of(r);
                        x / temperature + philox_gumbel(seed, stream, c as u64)
                    }
                };
                // Strict `>` keeps the lowest id on ties, as torch.argmax does.
                if key > best.0 {
                    best = (key, c);
                }
            }
            (best.1 as i32, row[best.1] - lse)
        })
        .collect();
    RowStats { token: picks.iter().map(|p| p.0).collect(), logprob: picks.iter().map(|p| p.1).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_gradient_is_softmax_minus_onehot() {
        let mut l = vec![1.0, 2.0, 0.5, 9.0, 3.0, 1.0, 1.0, 9.0];
        let loss = cross_entropy_fwd_bwd(&mut l, &[1, 0], &[2.0, 1.0], 2, 4, 3, 0.0);
        let z: f32 = [1.0f32, 2.0, 0.5].iter().map(|v| v.exp()).sum();
        assert!((loss[0] - (z.ln() - 2.0)).abs() < 1e-6);
        assert!((l[1] - 2.0 * ((2.0f32).exp() / z - 1.0)).abs() < 1e-6);
        assert_eq!(l[3], 0.0);
        let s: f32 = l[4..7].iter().sum();
        assert!(s.abs() < 1e-6);
    }

    #[test]
    fn pick_forbids_and_reports_log_prob() {
        let l = vec![0.0, 5.0, 1.0, 100.0];
        let st = vocab_pick(&l, 1, 4, 3, &[1], 1.0, None);
        assert_eq!(st.token, vec![2]);
        let lse = (1.0f32 + 1.0f32.exp()).ln();
        assert!((st.logprob[0] - (1.0 - lse)).abs() < 1e-6);
    }
}
