//! Bidirectional multi-head attention with a key-padding mask, forward and backward.
//!
//! The reference for the CUDA flash kernel: the same math row by row (scores, log-sum-exp,
//! probabilities recomputed from the saved log-sum-exp in the backward pass), never more than one
//! query row of scores in memory. Attention-probability dropout draws the mask for element
//! `((b·heads + h)·seq + i)·seq + j` of stream (`seed`, `stream`).

use super::linear::sgemm;
use super::simd;
use crate::backend::Dropout;
use crate::backend::{AttnCall, AttnSaved, Qkv, QkvGrads};
use crate::rng::{philox4x32_lanes, uniform_from_u32, LANES};
use rayon::prelude::*;

/// Dropout scales (0 or 1/(1-p)) of the `out.len()` consecutive probabilities starting at
/// element `start` of the Philox stream, the whole blocks `LANES` at a time.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // (lane, number) index the block's element
fn fill_keep(drop: Dropout, stream: u64, start: u64, out: &mut [f32]) {
    if !drop.active() {
        out.fill(1.0);
        return;
    }
    let scale = 1.0 / (1.0 - drop.p);
    let keep = |r: u32| if uniform_from_u32(r) >= drop.p { scale } else { 0.0 };
    let (end, mut idx) = (start + out.len() as u64, start);
    while idx < end {
        let first = idx >> 2;
        let r = philox4x32_lanes(first, stream, drop.seed);
        for l in 0..LANES {
            for q in 0..4 {
                let e = 4 * (first + l as u64) + q as u64;
                if e >= idx && e < end {
                    out[(e - start) as usize] = keep(r[q][l]);
                }
            }
        }
        idx = 4 * (first + LANES as u64);
    }
}

/// Σ a·b with 16 running sums, so the loop vectorises (a single sum would have to add in order).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// What every batch row of the attention passes reads.
struct Inputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    key_mask: &'a [i32],
    call: AttnCall,
}

pub fn attention_fwd(qkv: Qkv<'_, [f32]>, key_mask: &[i32], out: &mut [f32], lse: &mut [f32], call: AttnCall) {
    let Qkv { q, k, v } = qkv;
    let s = call.shape;
    let (t, nh, hid) = (s.seq, s.heads, s.hidden());
    let a = Inputs { q, k, v, key_mask, call };
    out[..s.tokens() * hid]
        .par_chunks_mut(t * hid)
        .zip(lse[..s.batch * nh * t].par_chunks_mut(nh * t))
        .enumerate()
        .for_each(|(b, (ob, lb))| fwd_batch(&a, b, ob, lb));
}

simd::multiversion! {
    /// Batch row `b` of `attention_fwd`: its outputs `ob` and log-sum-exps `lb`. Per head, the
    /// scores and the output are small GEMMs on strided views of q, k and v.
    fn fwd_batch(a: &Inputs<'_>, b: usize, ob: &mut [f32], lb: &mut [f32]) {
        let Inputs { q, k, v, key_mask, call } = *a;
        let AttnCall { shape: s, drop, stream } = call;
        let (t, nh, d) = (s.seq, s.heads, s.head_dim);
        let (hid, base) = (s.hidden(), b * t * s.hidden());
        let scale = 1.0 / (d as f32).sqrt();
        let mask = &key_mask[b * t..][..t];
        let (mut p, mut keep, mut o) = (vec![0.0f32; t * t], vec![1.0f32; t * t], vec![0.0f32; t * d]);
        let (hs, one) = (hid as isize, 1isize);
        for h in 0..nh {
            let at = base + h * d;
            // S = Q_h·K_hᵀ
            sgemm(t, t, d, &q[at..], hs, one, &k[at..], one, hs, &mut p, false);
            fill_keep(drop, stream, (((b * nh + h) * t) * t) as u64, &mut keep);
            for i in 0..t {
                let row = &mut p[i * t..][..t];
                let mut mx = f32::NEG_INFINITY;
                for (x, &m) in row.iter_mut().zip(mask) {
                    *x = if m != 0 { *x * scale } else { f32::NEG_INFINITY };
                    mx = if *x > mx { *x } else { mx };
                }
                if mx == f32::NEG_INFINITY {
                    // Every key is padding: no attention, an output of zeros.
                    row.fill(0.0);
                    lb[h * t + i] = f32::NEG_INFINITY;
                    continue;
                }
                let mut den = 0.0f32;
                for x in row.iter_mut() {
                    *x = simd::exp(*x - mx);
                    den += *x;
                }
                lb[h * t + i] = mx + den.ln();
                let inv = 1.0 / den;
                for (x, &kp) in row.iter_mut().zip(&keep[i * t..][..t]) {
                    *x = *x * inv * kp;
                }
            }
            // O_h = (P∘keep)·V_h
            sgemm(t, d, t, &p, t as isize, one, &v[at..], hs, one, &mut o, false);
            for i in 0..t {
                ob[i * hid + h * d..][..d].copy_from_slice(&o[i * d..][..d]);
            }
        }
    }
}

pub fn attention_bwd(
    qkv: Qkv<'_, [f32]>,
    key_mask: &[i32],
    saved: AttnSaved<'_, [f32]>,
    dout: &[f32],
    grads: QkvGrads<'_, [f32]>,
    call: AttnCall,
) {
    let Qkv { q, k, v } = qkv;
    let QkvGrads { dq, dk, dv } = grads;
    let s = call.shape;
    let (t, hid) = (s.seq, s.hidden());
    let n = s.tokens() * hid;
    let a = Inputs { q, k, v, key_mask, call };
    dq[..n]
        .par_chunks_mut(t * hid)
        .zip(dk[..n].par_chunks_mut(t * hid).zip(dv[..n].par_chunks_mut(t * hid)))
        .enumerate()
        .for_each(|(b, (dqb, (dkb, dvb)))| bwd_batch(&a, saved.out, saved.lse, dout, b, QkvGrads { dq: dqb, dk: dkb, dv: dvb }));
}

simd::multiversion! {
    /// Batch row `b` of `attention_bwd`: the gradients of its queries, keys and values, per
    /// head as small GEMMs (P recomputed from the saved log-sum-exps).
    fn bwd_batch(a: &Inputs<'_>, out: &[f32], lse: &[f32], dout: &[f32], b: usize, g: QkvGrads<'_, [f32]>) {
        let Inputs { q, k, v, key_mask, call } = *a;
        let AttnCall { shape: s, drop, stream } = call;
        let QkvGrads { dq: dqb, dk: dkb, dv: dvb } = g;
        let (t, nh, d) = (s.seq, s.heads, s.head_dim);
        let (hid, base) = (s.hidden(), b * t * s.hidden());
        let scale = 1.0 / (d as f32).sqrt();
        let mask = &key_mask[b * t..][..t];
        let (mut p, mut dp, mut w, mut keep) = (vec![0.0f32; t * t], vec![0.0f32; t * t], vec![0.0f32; t * t], vec![1.0f32; t * t]);
        let mut g_h = vec![0.0f32; t * d];
        let (hs, one, ts) = (hid as isize, 1isize, t as isize);
        let put = |dst: &mut [f32], src: &[f32], h: usize| {
            for i in 0..t {
                dst[i * hid + h * d..][..d].copy_from_slice(&src[i * d..][..d]);
            }
        };
        for h in 0..nh {
            let at = base + h * d;
            sgemm(t, t, d, &q[at..], hs, one, &k[at..], one, hs, &mut p, false);
            // dP = dO_h·V_hᵀ
            sgemm(t, t, d, &dout[at..], hs, one, &v[at..], one, hs, &mut dp, false);
            fill_keep(drop, stream, (((b * nh + h) * t) * t) as u64, &mut keep);
            for i in 0..t {
                let l = lse[(b * nh + h) * t + i];
                // D_i = dO_i · O_i = Σ_j p_ij dp_ij, with or without dropout.
                let di = dot(&dout[at + i * hid..][..d], &out[at + i * hid..][..d]);
                let (pr, dpr, wr, kr) = (&mut p[i * t..][..t], &mut dp[i * t..][..t], &mut w[i * t..][..t], &keep[i * t..][..t]);
                for j in 0..t {
                    let pij = if mask[j] != 0 { simd::exp(pr[j] * scale - l) } else { 0.0 };
                    wr[j] = pij * kr[j];
                    // dS, in place of dP
                    dpr[j] = pij * (dpr[j] * kr[j] - di) * scale;
                }
            }
            // dV_h = (P∘keep)ᵀ·dO_h, dQ_h = dS·K_h, dK_h = dSᵀ·Q_h
            sgemm(t, d, t, &w, one, ts, &dout[at..], hs, one, &mut g_h, false);
            put(dvb, &g_h, h);
            sgemm(t, d, t, &dp, ts, one, &k[at..], hs, one, &mut g_h, false);
            put(dqb, &g_h, h);
            sgemm(t, d, t, &dp, one, ts, &q[at..], hs, one, &mut g_h, false);
            put(dkb, &g_h, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::AttnShape;

    fn setup(s: AttnShape) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<i32>) {
        let n = s.tokens() * s.hidden();
        let q = (0..n).map(|i| (i as f32 * 0.13).sin()).collect();
        let k = (0..n).map(|i| (i as f32 * 0.29).cos()).collect();
        let v = (0..n).map(|i| (i as f32 * 0.07).sin() * 2.0).collect();
        let mut mask = vec![1; s.tokens()];
        mask[s.seq - 1] = 0; // last key of the first sequence is padding
        (q, k, v, mask)
    }

    #[test]
    fn backward_matches_finite_difference_with_dropout() {
        let s = AttnShape { batch: 2, seq: 4, heads: 2, head_dim: 3 };
        let (q, k, v, mask) = setup(s);
        let n = q.len();
        for drop in [Dropout::off(), Dropout { p: 0.3, seed: 5 }] {
            let w: Vec<f32> = (0..n).map(|i| (i as f32 * 0.41).cos()).collect();
            let f = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
                let mut o = vec![0.0; n];
                let mut l = vec![0.0; s.batch * s.heads * s.seq];
                attention_fwd(Qkv { q, k, v }, &mask, &mut o, &mut l, AttnCall { shape: s, drop, stream: 9 });
                o.iter().zip(&w).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
            };
            let mut o = vec![0.0; n];
            let mut l = vec![0.0; s.batch * s.heads * s.seq];
            attention_fwd(Qkv { q: &q, k: &k, v: &v }, &mask, &mut o, &mut l, AttnCall { shape: s, drop, stream: 9 });
            let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            attention_bwd(
                Qkv { q: &q, k: &k, v: &v },
                &mask,
                AttnSaved { out: &o, lse: &l },
                &w,
                QkvGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv },
                AttnCall { shape: s, drop, stream: 9 },
            );
            let eps = 1e-2f32;
            for i in 0..n {
                for (which, grad) in [(0, &dq), (1, &dk), (2, &dv)] {
                    let mut a = [q.clone(), k.clone(), v.clone()];
                    a[which][i] += eps;
                    let fp = f(&a[0], &a[1], &a[2]);
                    a[which][i] -= 2.0 * eps;
                    let fm = f(&a[0], &a[1], &a[2]);
                    let fd = (fp - fm) / (2.0 * eps as f64);
                    assert!((fd - grad[i] as f64).abs() < 3e-3, "tensor {which} i={i} fd={fd} g={}", grad[i]);
                }
            }
        }
    }

    #[test]
    fn a_row_of_padding_attends_to_nothing() {
        let s = AttnShape { batch: 2, seq: 5, heads: 2, head_dim: 4 };
        let (q, k, v, mut mask) = setup(s);
        mask[s.seq..].fill(0); // the second batch row is all padding
        let n = q.len();
        let (mut o, mut l) = (vec![f32::NAN; n], vec![f32::NAN; s.batch * s.heads * s.seq]);
        attention_fwd(Qkv { q: &q, k: &k, v: &v }, &mask, &mut o, &mut l, AttnCall { shape: s, drop: Dropout::off(), stream: 0 });
        assert!(o[..n / 2].iter().all(|x| x.is_finite()) && o[n / 2..].iter().all(|&x| x == 0.0), "{o:?}");
        assert!(l[l.len() / 2..].iter().all(|&x| x == f32::NEG_INFINITY));
        let (mut dq, mut dk, mut dv) = (vec![f32::NAN; n], vec![f32::NAN; n], vec![f32::NAN; n]);
        let grads = QkvGrads { dq: &mut dq[..], dk: &mut dk[..], dv: &mut dv[..] };
        let call = AttnCall { shape: s, drop: Dropout::off(), stream: 0 };
        attention_bwd(Qkv { q: &q, k: &k, v: &v }, &mask, AttnSaved { out: &o, lse: &l }, &q, grads, call);
        assert!(dq.iter().chain(&dk).chain(&dv).all(|x| x.is_finite()));
    }
}
