//! Fused residual-add + LayerNorm, forward and backward.

use crate::backend::{LnGrads, LnParams, LnSaved, LnStats, Residual, RowsShape};
use rayon::prelude::*;

pub fn add_layernorm_fwd(
    x: &[f32],
    residual: Option<Residual<'_, [f32]>>,
    params: LnParams<'_, [f32]>,
    out: &mut [f32],
    stats: LnStats<'_, [f32]>,
    shape: RowsShape,
) {
    let (residual, mut sum) = Residual::unzip(residual);
    let LnParams { gamma, beta, eps } = params;
    let LnStats { mean, rstd } = stats;
    let RowsShape { rows, cols } = shape;
    if let (Some(r), Some(s)) = (residual, sum.as_deref_mut()) {
        s[..rows * cols].par_iter_mut().zip(&x[..rows * cols]).zip(&r[..rows * cols]).for_each(|((o, a), b)| *o = a + b);
    }
    let input: &[f32] = match (residual, sum.as_deref()) {
        (Some(_), Some(s)) => s,
        (Some(_), None) => panic!("add_layernorm_fwd: a residual needs a `sum` buffer"),
        (None, _) => x,
    };
    out[..rows * cols].par_chunks_mut(cols).zip(mean[..rows].par_iter_mut().zip(rstd[..rows].par_iter_mut())).enumerate().for_each(
        |(r, (o, (mu, rs)))| {
            let (m, r_std) = normalize_row(&input[r * cols..][..cols], gamma, beta, eps, o);
            *mu = m;
            *rs = r_std;
        },
    );
}

/// Σ f(x) over a row in 16 f64 lanes (so that the loop vectorises; the lanes add up at the end).
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 16];
    let chunks = row.chunks_exact(16);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v as f64)).sum();
    for c in chunks {
        for l in 0..16 {
            acc[l] += f(c[l] as f64);
        }
    }
    acc.iter().sum::<f64>() + tail
}

crate::backend::cpu::simd::multiversion! {
    /// One row of `add_layernorm_fwd`: statistics in f64, `o = x̂·γ + β`; returns (mean, rstd).
    fn normalize_row_into(row: &[f32], gamma: &[f32], beta: &[f32], eps: f32, o: &mut [f32], stats: &mut (f32, f32)) {
        let n = row.len() as f64;
        let m = lane_sum(row, |v| v) / n;
        let var = lane_sum(row, |v| (v - m) * (v - m)) / n;
        let s = 1.0 / (var + eps as f64).sqrt();
        for (((o, &x), &g), &b) in o.iter_mut().zip(row).zip(gamma).zip(beta) {
            *o = (((x as f64 - m) * s) as f32) * g + b;
        }
        *stats = (m as f32, s as f32);
    }
}

fn normalize_row(row: &[f32], gamma: &[f32], beta: &[f32], eps: f32, o: &mut [f32]) -> (f32, f32) {
    let mut stats = (0.0, 0.0);
    normalize_row_into(row, gamma, beta, eps, o, &mut stats);
    stats
}

pub fn layernorm_bwd(x: &[f32], dout: &[f32], saved: LnSaved<'_, [f32]>, grads: LnGrads<'_, [f32]>, shape: RowsShape) {
    let LnSaved { gamma, mean, rstd } = saved;
    let LnGrads { dx, accumulate, dgamma, dbeta } = grads;
    let RowsShape { rows, cols } = shape;
    const BLOCK: usize = 64;
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx[..rows * cols]
        .par_chunks_mut(BLOCK * cols)
        .enumerate()
        .map(|(blk, dxc)| {
            let mut dg = vec![0.0f32; cols];
            let mut dbt = vec![0.0f32; cols];
            for (i, dxr) in dxc.chunks_mut(cols).enumerate() {
                let r = blk * BLOCK + i;
                let xr = &x[r * cols..][..cols];
                let gr = &dout[r * cols..][..cols];
                let (mu, rs) = (mean[r], rstd[r]);
                let mut sum_g = 0.0f64;
                let mut sum_gx = 0.0f64;
                for c in 0..cols {
                    let xhat = (xr[c] - mu) * rs;
                    let g = gr[c] * gamma[c];
                    sum_g += g as f64;
                    sum_gx += (g * xhat) as f64;
                    dg[c] += gr[c] * xhat;
                    dbt[c] += gr[c];
                }
                let mg = (sum_g / cols as f64) as f32;
                let mgx = (sum_gx / cols as f64) as f32;
                for c in 0..cols {
                    let xhat = (xr[c] - mu) * rs;
                    let v = rs * (gr[c] * gamma[c] - mg - xhat * mgx);
                    if accumulate {
                        dxr[c] += v;
                    } else {
                        dxr[c] = v;
                    }
                }
            }
            (dg, dbt)
        })
        .collect();
    for (dg, dbt) in partial {
        for c in 0..cols {
            dgamma[c] += dg[c];
            dbeta[c] += dbt[c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layernorm_backward_matches_finite_difference() {
        let (rows, cols) = (3, 8);
        let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7 % 11) as f32 * 0.3).sin()).collect();
        let gamma: Vec<f32> = (0..cols).map(|i| 1.0 + 0.1 * i as f32).collect();
        let beta: Vec<f32> = (0..cols).map(|i| 0.05 * i as f32).collect();
        let w: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.77).cos()).collect();
        let loss = |x: &[f32]| -> f64 {
            let mut out = vec![0.0; rows * cols];
            let (mut m, mut r) = (vec![0.0; rows], vec![0.0; rows]);
            add_layernorm_fwd(
                x,
                None,
                LnParams { gamma: &gamma, beta: &beta, eps: 1e-5 },
                &mut out,
                LnStats { mean: &mut m, rstd: &mut r },
                RowsShape { rows, cols },
            );
            out.iter().zip(&w).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
        };
        let mut out = vec![0.0; rows * cols];
        let (mut m, mut r) = (vec![0.0; rows], vec![0.0; rows]);
        add_layernorm_fwd(
            &x,
            None,
            LnParams { gamma: &gamma, beta: &beta, eps: 1e-5 },
            &mut out,
            LnStats { mean: &mut m, rstd: &mut r },
            RowsShape { rows, cols },
        );
        let mut dx = vec![0.0; rows * cols];
        let (mut dg, mut db) = (vec![0.0; cols], vec![0.0; cols]);
        layernorm_bwd(
            &x,
            &w,
            LnSaved { gamma: &gamma, mean: &m, rstd: &r },
            LnGrads { dx: &mut dx, accumulate: false, dgamma: &mut dg, dbeta: &mut db },
            RowsShape { rows, cols },
        );
        for i in 0..rows * cols {
            let mut xp = x.clone();
            let mut xm = x.clone();
            xp[i] += 1e-2;
            xm[i] -= 1e-2;
            let fd = (loss(&xp) - loss(&xm)) / 2e-2;
            assert!((fd - dx[i] as f64).abs() < 2e-3, "i={i} fd={fd} dx={}", dx[i]);
        }
    }
}
