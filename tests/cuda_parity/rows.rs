//! kernels/rows.cu: row gathers and scatters. CUDA launcher: src/backend/cuda/rows.rs; CPU twin: src/backend/cpu/rows.rs.

use super::*;

#[test]
fn row_gather_and_scatter_match_cpu() {
    let Some(g) = gpu("row_gather_and_scatter_match_cpu") else { return };
    let mut rng = fresh_rng("rows");
    let c = CpuBackend::new();
    let (src_rows, cols, n_rows) = (97usize, 77usize, 31usize);
    let (x, xr) = up(&g, &normal_vec(&mut rng, src_rows * cols, 1.0));
    let mut picks: Vec<i32> = (0..src_rows as i32).collect();
    rng.shuffle(&mut picks);
    picks.truncate(n_rows);
    let gi = g.upload_i32(&picks).unwrap();
    let mut out = g.upload(&poison(n_rows * cols)).unwrap();
    g.gather_rows(&x, &gi, &mut out, n_rows, cols).unwrap();
    let mut want = vec![0.0; n_rows * cols];
    c.gather_rows(&xr, &picks, &mut want, n_rows, cols).unwrap();
    assert_exact("gather_rows", &down(&g, &out), &want);

    let (dout, dr) = up(&g, &normal_vec(&mut rng, n_rows * cols, 1.0));
    let (mut dx, mut dxr) = up(&g, &normal_vec(&mut rng, src_rows * cols, 1.0));
    g.scatter_add_rows(&dout, &gi, &mut dx, n_rows, cols).unwrap();
    c.scatter_add_rows(&dr, &picks, &mut dxr, n_rows, cols).unwrap();
    assert_exact("scatter_add_rows (bf16)", &down(&g, &dx), &bf16_round(&dxr));

    let base = normal_vec(&mut rng, src_rows * cols, 1.0);
    let mut dxf = g.upload_f32(&base).unwrap();
    let mut wf = base.clone();
    g.scatter_add_rows(&dout, &gi, &mut dxf, n_rows, cols).unwrap();
    c.scatter_add_rows(&dr, &picks, &mut wf, n_rows, cols).unwrap();
    assert_exact("scatter_add_rows (f32)", &down(&g, &dxf), &wf);

    let dup = g.upload_i32(&[3, 5, 3]).unwrap();
    assert!(g.scatter_add_rows(&dout, &dup, &mut dx, 3, cols).is_err(), "repeated scatter rows must be an error");
    let far = g.upload_i32(&[src_rows as i32]).unwrap();
    assert!(g.gather_rows(&x, &far, &mut out, 1, cols).is_err(), "a row past the end must be an error");
}
