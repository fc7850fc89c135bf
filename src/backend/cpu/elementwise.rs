//! Dropout (Philox masks regenerated in the backward pass), exact-erf GELU, ReLU and tanh.

use super::simd;
use crate::backend::Activation;
use crate::rng::{philox4x32, philox4x32_lanes, uniform_from_u32, LANES};
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// Multiplies `x[i]` by `0` or `1/(1-p)` with the mask of (`seed`, `stream`, i).
pub fn dropout_apply(x: &mut [f32], p: f32, seed: u64, stream: u64) {
    if p <= 0.0 {
        return;
    }
    // CHUNK is a multiple of 4·LANES, so each chunk starts on a Philox block of its own.
    x.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| dropout_chunk(chunk, (c * CHUNK) as u64, p, seed, stream));
}

simd::multiversion! {
    /// `dropout_apply` on the elements `base ..` of `x` (`base` a multiple of 4).
    fn dropout_chunk(x: &mut [f32], base: u64, p: f32, seed: u64, stream: u64) {
        let scale = 1.0 / (1.0 - p);
        let apply = |v: &mut f32, r: u32| {
            *v = if uniform_from_u32(r) >= p { *v * scale } else { 0.0 };
        };
        let mut groups = x.chunks_exact_mut(4 * LANES);
        let mut block = base >> 2;
        for g in groups.by_ref() {
            let r = philox4x32_lanes(block, stream, seed);
            for l in 0..LANES {
                for q in 0..4 {
                    apply(&mut g[4 * l + q], r[q][l]);
                }
            }
            block += LANES as u64;
        }
        for (i, quad) in groups.into_remainder().chunks_mut(4).enumerate() {
            let b = block + i as u64;
            let r = philox4x32([b as u32, (b >> 32) as u32, stream as u32, (stream >> 32) as u32], [seed as u32, (seed >> 32) as u32]);
            for (q, v) in quad.iter_mut().enumerate() {
                apply(v, r[q]);
            }
        }
    }
}

/// Exact-erf GELU, x·Φ(x) with Φ(x) = erfc(−x/√2)/2, in f32 (erfc as simd.rs computes it).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * simd::erfc(-x * std::f32::consts::FRAC_1_SQRT_2)
}

/// d GELU / dx = Φ(x) + x·φ(x).
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * simd::erfc(-x * std::f32::consts::FRAC_1_SQRT_2);
    let pdf = simd::exp(-0.5 * x * x) * 0.398_942_3;
    cdf + x * pdf
}

simd::multiversion! {
    fn gelu_chunk(x: &[f32], y: &mut [f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = gelu(v);
        }
    }
}

simd::multiversion! {
    fn gelu_grad_chunk(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
            *o = g * gelu_grad(v);
        }
    }
}

pub fn gelu_fwd(x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(yc, xc)| gelu_chunk(xc, yc));
}

pub fn gelu_bwd(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(dc, (xc, gc))| gelu_grad_chunk(xc, gc, dc));
}

/// `y = act(x)` (ReLU or tanh).
pub fn activation_fwd(act: Activation, x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(yc, xc)| {
        for (o, &v) in yc.iter_mut().zip(xc) {
            *o = match act {
                Activation::Relu => v.max(0.0),
                Activation::Tanh => v.tanh(),
            };
        }
    });
}

/// `dx = dy · act'`, from the forward's input (ReLU: 1 where x > 0) or output (tanh: 1 − y²).
pub fn activation_bwd(act: Activation, saved: &[f32], dy: &[f32], dx: &mut [f32]) {
    dx.par_chunks_mut(CHUNK).zip(saved.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(dc, (sc, gc))| {
        for ((o, &s), &g) in dc.iter_mut().zip(sc).zip(gc) {
            *o = match act {
                Activation::Relu => {
                    if s > 0.0 {
                        g
                    } else {
                        0.0
                    }
                }
                Activation::Tanh => g * (1.0 - s * s),
            };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_grad_matches_finite_difference() {
        for &x in &[-3.0f32, -1.0, -0.3, 0.0, 0.5, 2.0] {
            let h = 1e-3f64;
            let fd = (gelu((x as f64 + h) as f32) as f64 - gelu((x as f64 - h) as f32) as f64) / (2.0 * h);
            assert!((fd - gelu_grad(x) as f64).abs() < 2e-3, "x={x}");
        }
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        // Against the library's erf in f64, across the range activations take.
        let mut x = -12.0f32;
        while x < 12.0 {
            let want = 0.5 * x as f64 * libm::erfc(-x as f64 / std::f64::consts::SQRT_2);
            // erfc's error (simd.rs) at x/√2 grows with x² where GELU is already below 1e-4.
            assert!((gelu(x) as f64 - want).abs() <= 1e-6 * want.abs() + 1e-10, "gelu({x}) = {} vs {want}", gelu(x));
            x += 0.013;
        }
    }

    #[test]
    fn dropout_rate_and_scale() {
        let mut x = vec![1.0f32; 100_000];
        dropout_apply(&mut x, 0.1, 42, 7);
        let zeros = x.iter().filter(|&&v| v == 0.0).count();
        assert!((zeros as f64 / 1e5 - 0.1).abs() < 0.01);
        assert!(x.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        let mut y = vec![1.0f32; 100_000];
        dropout_apply(&mut y, 0.1, 42, 7);
        assert_eq!(x, y);
        // Element i uses number i of the Philox stream, as the CUDA kernel does.
        for i in [0usize, 1, 2, 3, 4, 5, 99_999] {
            let keep = crate::rng::philox_uniform(42, 7, i as u64) >= 0.1;
            assert_eq!(x[i] != 0.0, keep, "element {i}");
        }
    }
}
