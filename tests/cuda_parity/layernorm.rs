//! kernels/layernorm.cu: residual add + LayerNorm forward and backward. CUDA launcher: src/backend/cuda/layernorm.rs; CPU twin: src/backend/cpu/layernorm.rs.

use super::*;

#[test]
fn add_layernorm_matches_cpu() {
    let Some(g) = gpu("add_layernorm_matches_cpu") else { return };
    let mut rng = fresh_rng("layernorm");
    for &(rows, cols) in &[(1usize, 8usize), (37, 33), (64, 768), (9, 1000), (3, 4096)] {
        let n = rows * cols;
        let (x, xr) = up(&g, &normal_vec(&mut rng, n, 2.0));
        let (r, rr) = up(&g, &normal_vec(&mut rng, n, 2.0));
        let (gamma, gr) = up(&g, &normal_vec(&mut rng, cols, 1.0));
        let (beta, br) = up(&g, &normal_vec(&mut rng, cols, 1.0));
        for with_res in [false, true] {
            let tag = format!("layernorm {rows}x{cols} residual={with_res}");
            let mut out = g.upload(&poison(n)).unwrap();
            let mut sum = g.upload(&poison(n)).unwrap();
            let (mut mean, mut rstd) = (g.upload_f32(&poison(rows)).unwrap(), g.upload_f32(&poison(rows)).unwrap());
            g.add_layernorm_fwd(
                &x,
                with_res.then_some(Residual { residual: &r, sum: &mut sum }),
                LnParams { gamma: &gamma, beta: &beta, eps: 1e-5 },
                &mut out,
                LnStats { mean: &mut mean, rstd: &mut rstd },
                RowsShape { rows, cols },
            )
            .unwrap();
            // The kernel normalises the bf16-rounded sum it stores; the reference does the same.
            let input = if with_res {
                let s = bf16_round(&xr.iter().zip(&rr).map(|(a, b)| a + b).collect::<Vec<_>>());
                assert_exact(&format!("{tag} sum"), &down(&g, &sum), &s);
                s
            } else {
                xr.clone()
            };
            let (mut o, mut m, mut s) = (vec![0.0; n], vec![0.0; rows], vec![0.0; rows]);
            cpu::layernorm::add_layernorm_fwd(
                &input,
                None,
                LnParams { gamma: &gr, beta: &br, eps: 1e-5 },
                &mut o,
                LnStats { mean: &mut m, rstd: &mut s },
                RowsShape { rows, cols },
            );
            assert_close(&format!("{tag} out"), &down(&g, &out), &o, TOL_BF16);
            if cols <= 4096 {
                // Backward from the saved statistics, overwriting and then accumulating into dx.
                let (dout, dr) = up(&g, &normal_vec(&mut rng, n, 1.0));
                let (mut dx, mut dxr) = up(&g, &normal_vec(&mut rng, n, 1.0));
                let (mut dgam, mut dgr) = up(&g, &normal_vec(&mut rng, cols, 1.0));
                let (mut dbet, mut dbr) = up(&g, &normal_vec(&mut rng, cols, 1.0));
                let xin = if with_res { &sum } else { &x };
                for accumulate in [false, true] {
                    g.layernorm_bwd(
                        xin,
                        &dout,
                        LnSaved { gamma: &gamma, mean: &mean, rstd: &rstd },
                        LnGrads { dx: &mut dx, accumulate, dgamma: &mut dgam, dbeta: &mut dbet },
                        RowsShape { rows, cols },
                    )
                    .unwrap();
                    cpu::layernorm::layernorm_bwd(
                        &input,
                        &dr,
                        LnSaved { gamma: &gr, mean: &m, rstd: &s },
                        LnGrads { dx: &mut dxr, accumulate, dgamma: &mut dgr, dbeta: &mut dbr },
                        RowsShape { rows, cols },
                    );
                    let t = format!("{tag} backward accumulate={accumulate}");
                    assert_close(&format!("{t} dx"), &down(&g, &dx), &dxr, TOL_BF16);
                    assert_close(&format!("{t} dgamma"), &down(&g, &dgam), &dgr, TOL_STAT);
                    assert_close(&format!("{t} dbeta"), &down(&g, &dbet), &dbr, TOL_STAT);
                }
            }
            // A row's mean can sit near zero, so its error is measured against the row's spread.
            for (r, (a, b)) in down(&g, &mean).iter().zip(&m).enumerate() {
                assert!(((a - b) * s[r]).abs() as f64 <= TOL_STAT, "{tag} mean[{r}]: got {a}, want {b}");
            }
            assert_close(&format!("{tag} rstd"), &down(&g, &rstd), &s, TOL_STAT);
        }
        let (mut out, mut mean, mut rstd) = (g.zeros(n).unwrap(), g.zeros(rows).unwrap(), g.zeros(rows).unwrap());
        let mut short = g.zeros(n - 1).unwrap();
        let res = g.add_layernorm_fwd(
            &x,
            Some(Residual { residual: &r, sum: &mut short }),
            LnParams { gamma: &gamma, beta: &beta, eps: 1e-5 },
            &mut out,
            LnStats { mean: &mut mean, rstd: &mut rstd },
            RowsShape { rows, cols },
        );
        assert!(res.is_err(), "a sum buffer shorter than the rows must be an error");
    }
}
