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

/// The prefix cache's scatter: exact copies into the named rows, the others untouched, into bf16
/// and f32 targets; repeated rows are an error.
#[test]
fn scatter_rows_matches_cpu() {
    let Some(g) = gpu("scatter_rows_matches_cpu") else { return };
    let mut rng = fresh_rng("scatter_rows");
    let c = CpuBackend::new();
    let (dst_rows, cols, n_rows) = (61usize, 45usize, 17usize);
    let mut picks: Vec<i32> = (0..dst_rows as i32).collect();
    rng.shuffle(&mut picks);
    picks.truncate(n_rows);
    let gi = g.upload_i32(&picks).unwrap();
    let (x, xr) = up(&g, &normal_vec(&mut rng, n_rows * cols, 1.0));
    let (mut out, mut want) = up(&g, &normal_vec(&mut rng, dst_rows * cols, 1.0));
    g.scatter_rows(&x, &gi, &mut out, n_rows, cols).unwrap();
    c.scatter_rows(&xr, &picks, &mut want, n_rows, cols).unwrap();
    assert_exact("scatter_rows (bf16)", &down(&g, &out), &want);

    let base = normal_vec(&mut rng, dst_rows * cols, 1.0);
    let (mut outf, mut wantf) = (g.upload_f32(&base).unwrap(), base.clone());
    g.scatter_rows(&x, &gi, &mut outf, n_rows, cols).unwrap();
    c.scatter_rows(&xr, &picks, &mut wantf, n_rows, cols).unwrap();
    assert_exact("scatter_rows (f32)", &down(&g, &outf), &wantf);

    let dup = g.upload_i32(&[2, 4, 2]).unwrap();
    assert!(g.scatter_rows(&x, &dup, &mut out, 3, cols).is_err(), "repeated scatter rows must be an error");
}
