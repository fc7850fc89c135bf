//! The dense layers (cuBLASLt and the bias column sums of kernels/rows.cu). CUDA launcher: src/backend/cuda/linear.rs; CPU twin: src/backend/cpu/linear.rs.

use super::*;

#[test]
fn linear_forward_and_backward_match_cpu() {
    let Some(g) = gpu("linear_forward_and_backward_match_cpu") else { return };
    let mut rng = fresh_rng("linear");
    for &(m, n, k) in &[(1usize, 1usize, 1usize), (37, 53, 29), (128, 768, 768), (64, 1000, 64), (5, 3072, 768)] {
        let (x, xr) = up(&g, &normal_vec(&mut rng, m * k, 1.0));
        let (w, wr) = up(&g, &normal_vec(&mut rng, n * k, 0.05));
        let (b, br) = up(&g, &normal_vec(&mut rng, n, 0.5));
        for with_bias in [false, true] {
            let mut y = g.upload(&poison(m * n)).unwrap();
            g.linear_fwd(&x, &w, with_bias.then_some(&b), &mut y, Gemm { m, n, k }).unwrap();
            let mut want = vec![0.0; m * n];
            cpu::linear::linear_fwd(&xr, &wr, with_bias.then_some(br.as_slice()), &mut want, Gemm { m, n, k });
            assert_close(&format!("linear_fwd {m}x{n}x{k} bias={with_bias}"), &down(&g, &y), &want, TOL_BF16);
        }
        // Backward: dx overwritten, dw and db accumulate onto earlier values.
        let (dy, dyr) = up(&g, &normal_vec(&mut rng, m * n, 1.0));
        let (mut dw, mut dwr) = up(&g, &normal_vec(&mut rng, n * k, 0.1));
        let (mut db, mut dbr) = up(&g, &normal_vec(&mut rng, n, 0.1));
        let mut dx = g.upload(&poison(m * k)).unwrap();
        g.linear_bwd(&x, &w, &dy, LinearGrads { dx: Some(&mut dx), dw: &mut dw, db: Some(&mut db) }, Gemm { m, n, k }).unwrap();
        let mut dxr = vec![0.0; m * k];
        cpu::linear::linear_bwd(&xr, &wr, &dyr, LinearGrads { dx: Some(&mut dxr), dw: &mut dwr, db: Some(&mut dbr) }, Gemm { m, n, k });
        let tag = format!("{m}x{n}x{k}");
        assert_close(&format!("linear_bwd dx {tag}"), &down(&g, &dx), &dxr, TOL_BF16);
        // dw, db are f32 accumulators of products of bf16 operands: f32-level agreement.
        assert_close(&format!("linear_bwd dw {tag}"), &down(&g, &dw), &dwr, TOL_STAT);
        assert_close(&format!("linear_bwd db {tag}"), &down(&g, &db), &dbr, TOL_STAT);
        assert_eq!(dw.dtype(), "f32", "parameter gradients accumulate in f32");
    }
}
