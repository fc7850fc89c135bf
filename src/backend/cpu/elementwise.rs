//! Dropout (Philox masks regenerated in the backward pass), exact-erf GELU, ReLU and tanh.

use crate::backend::Activation;
use crate::rng::philox4x32;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// Multiplies `x[i]` by `0` or `1/(1-p)` with the mask of (`seed`, `stream`, i).
pub fn dropout_apply(x: &mut [f32], p: f32, seed: u64, stream: u64) {
    if p <= 0.0 {
        return;
    }
    let scale = 1.0 / (1.0 - p);
    // CHUNK is a multiple of 4, so each Philox block (4 numbers) is computed once.
    x.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let base = (c * CHUNK) as u64;
        for (q, quad) in chunk.chunks_mut(4).enumerate() {
            let idx = base + 4 * q as u64;
            let block = idx >> 2;
            let r =
                philox4x32([block as u32, (block >> 32) as u32, stream as u32, (stream >> 32) as u32], [seed as u32, (seed >> 32) as u32]);
            for (lane, v) in quad.iter_mut().enumerate() {
                let u = (r[lane] >> 8) as f32 * (1.0 / 16_777_216.0);
                *v = if u >= p { *v * scale } else { 0.0 };
            }
        }
    });
}

/// Exact-erf GELU in f32, as PyTorch computes it.
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline]
pub fn gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * x * x).exp() * 0.398_942_3;
    cdf + x * pdf
}

pub fn gelu_fwd(x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(yc, xc)| {
        for (o, &v) in yc.iter_mut().zip(xc) {
            *o = gelu(v);
        }
    });
}

pub fn gelu_bwd(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(dc, (xc, gc))| {
        for ((o, &v), &g) in dc.iter_mut().zip(xc).zip(gc) {
            *o = g * gelu_grad(v);
        }
    });
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
