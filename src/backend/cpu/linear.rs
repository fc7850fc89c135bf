//! Dense layers on the CPU through the `gemm` crate (blocked, SIMD, multi-threaded).

use crate::backend::{Gemm, LinearGrads};
use rayon::prelude::*;

/// `c[m,n] = (accumulate ? c : 0) + a · b` where `a` is `m×k` and `b` is `k×n`, each described by
/// its row and column strides so transposes cost nothing.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: isize,
    a_cs: isize,
    b: &[f32],
    b_rs: isize,
    b_cs: isize,
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(c.len() >= m * n, "gemm: output too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let span = |rows: usize, cols: usize, rs: isize, cs: isize| (rows - 1) * rs as usize + (cols - 1) * cs as usize + 1;
    assert!(a.len() >= span(m, k, a_rs, a_cs), "gemm: lhs too small");
    assert!(b.len() >= span(k, n, b_rs, b_cs), "gemm: rhs too small");
    // Why: small products pay more for thread wake-ups than they gain.
    let par = if m * n * k >= 1 << 18 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above bound every index the strides can reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// `y[m,n] = x[m,k] · w[n,k]ᵀ + bias`.
pub fn linear_fwd(x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32], dims: Gemm) {
    let Gemm { m, n, k } = dims;
    sgemm(m, n, k, x, k as isize, 1, w, 1, k as isize, y, false);
    if let Some(b) = bias {
        y[..m * n].par_chunks_mut(n).for_each(|row| {
            for (o, bb) in row.iter_mut().zip(b) {
                *o += bb;
            }
        });
    }
}

/// Backward of `linear_fwd`. `dx` is overwritten; `dw` and `db` accumulate.
pub fn linear_bwd(x: &[f32], w: &[f32], dy: &[f32], grads: LinearGrads<'_, [f32]>, dims: Gemm) {
    let Gemm { m, n, k } = dims;
    let LinearGrads { dx, dw, db } = grads;
    if let Some(dx) = dx {
        sgemm(m, k, n, dy, n as isize, 1, w, k as isize, 1, dx, false);
    }
    sgemm(n, k, m, dy, 1, n as isize, x, k as isize, 1, dw, true);
    if let Some(db) = db {
        col_sums_add(dy, db, m, n);
    }
}

/// `acc[j] += Σ_i x[i, j]`, reduced over row blocks in parallel.
pub fn col_sums_add(x: &[f32], acc: &mut [f32], rows: usize, cols: usize) {
    let block = 256usize;
    let partial: Vec<Vec<f32>> = x[..rows * cols]
        .par_chunks(block * cols)
        .map(|chunk| {
            let mut s = vec![0.0f32; cols];
            for row in chunk.chunks(cols) {
                for (a, v) in s.iter_mut().zip(row) {
                    *a += v;
                }
            }
            s
        })
        .collect();
    for p in partial {
        for (a, v) in acc.iter_mut().zip(&p) {
            *a += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
            }
        }
        y
    }

    #[test]
    fn linear_matches_naive_and_backward_is_consistent() {
        let (m, n, k) = (7, 5, 3);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.91).cos()).collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        let mut y = vec![0.0; m * n];
        linear_fwd(&x, &w, Some(&b), &mut y, Gemm { m, n, k });
        let yn = naive(&x, &w, m, n, k);
        for i in 0..m * n {
            assert!((y[i] - yn[i] - b[i % n]).abs() < 1e-5);
        }
        // dy = ones → dx[i,t] = Σ_j w[j,t], dw[j,t] = Σ_i x[i,t], db[j] = m.
        let dy = vec![1.0; m * n];
        let mut dx = vec![9.0; m * k];
        let mut dw = vec![1.0; n * k];
        let mut db = vec![0.5; n];
        linear_bwd(&x, &w, &dy, LinearGrads { dx: Some(&mut dx), dw: &mut dw, db: Some(&mut db) }, Gemm { m, n, k });
        for i in 0..m {
            for t in 0..k {
                let e: f32 = (0..n).map(|j| w[j * k + t]).sum();
                assert!((dx[i * k + t] - e).abs() < 1e-5);
            }
        }
        for j in 0..n {
            for t in 0..k {
                let e: f32 = 1.0 + (0..m).map(|i| x[i * k + t]).sum::<f32>();
                assert!((dw[j * k + t] - e).abs() < 1e-5);
            }
            assert_eq!(db[j], 0.5 + m as f32);
        }
    }
}
