//! kernels/pool.cu: mean pooling over each sequence's real rows (the length predictor). CUDA
//! launcher: src/backend/cuda/pool.rs; CPU twin: src/backend/cpu/pool.rs.

use super::*;
use dlm_engine::backend::PoolShape;

/// Odd sizes, a sequence with a single real row and one with none (zeros out, no gradient).
#[test]
fn mean_pool_matches_cpu() {
    let Some(g) = gpu("mean_pool_matches_cpu") else { return };
    let mut rng = fresh_rng("mean_pool");
    let s = PoolShape { batch: 5, seq: 37, cols: 99 };
    let real = [37usize, 1, 20, 0, 36];
    let mask: Vec<i32> = real.iter().flat_map(|&n| (0..s.seq).map(move |j| (j < n) as i32)).collect();
    let gm = g.upload_i32(&mask).unwrap();
    let (x, xr) = up(&g, &normal_vec(&mut rng, s.batch * s.seq * s.cols, 1.0));
    let mut out = g.upload(&poison(s.batch * s.cols)).unwrap();
    g.mean_pool_fwd(&x, &gm, &mut out, s).unwrap();
    let mut want = vec![0.0; s.batch * s.cols];
    cpu::pool::mean_pool_fwd(&xr, &mask, &mut want, s);
    // Sums over up to 37 rows in f32 in the same order, rounded once to bf16.
    assert_close("mean_pool_fwd", &down(&g, &out), &want, TOL_BF16);
    assert!(down(&g, &out)[3 * s.cols..4 * s.cols].iter().all(|&v| v == 0.0), "a sequence without real rows pools to zero");

    let (dout, dr) = up(&g, &normal_vec(&mut rng, s.batch * s.cols, 1.0));
    let mut dx = g.upload(&poison(s.batch * s.seq * s.cols)).unwrap();
    g.mean_pool_bwd(&dout, &gm, &mut dx, s).unwrap();
    let mut dwant = vec![0.0; s.batch * s.seq * s.cols];
    cpu::pool::mean_pool_bwd(&dr, &mask, &mut dwant, s);
    assert_close("mean_pool_bwd", &down(&g, &dx), &dwant, TOL_BF16);

    let short = g.upload_i32(&mask[..10]).unwrap();
    assert!(g.mean_pool_fwd(&x, &short, &mut out, s).is_err(), "a mask of the wrong size must be an error");
}
