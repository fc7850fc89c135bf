//! CUDA backend vs the CPU reference (`dlm_engine::backend::cpu::*`), op by op, on fresh random
//! inputs (seed printed; replay with DLM_TEST_SEED) including odd sizes and padding. Without a
//! GPU every test prints "skipped …: no CUDA driver/GPU" and passes.
//!
//! Inputs are uploaded as bf16, so the CPU reference always runs on the bf16-rounded values: the
//! measured difference is the kernels' arithmetic and their output rounding only. Tolerances
//! (method: docs/gpu.md §7; relative L2 = ‖gpu − cpu‖ / ‖cpu‖, NaN never passes):
//! - bf16 outputs of f32 arithmetic (GEMMs, GELU, LayerNorm out, attention out and dq/dk/dv with or
//!   without dropout, dlogits): 1e-2
//!   (docs/gpu.md §7: bf16 operands land between 1e-3 and 1e-2; one bf16 rounding alone is ≤ 2^-9);
//! - f32 statistics recomputed in another order (mean, rstd, lse, losses, log-probs): 1e-4 relative;
//! - ops whose arithmetic is identical on both sides (copies, embedding sums, dropout masks,
//!   the training noise (q_sample), row moves, AdamW with its un-fused f32 operations, Philox):
//!   bit-equal; the attention dropout mask is compared element by element (which probabilities
//!   are zero).
//!
//! Outputs start NaN-poisoned, so an element a kernel never writes fails the check.

mod common;

use common::*;
use dlm_engine::backend::cpu::{self, CpuBackend};
use dlm_engine::backend::cuda::CudaBackend;
use dlm_engine::backend::{pack_gumbel, pack_seed, AdamW, AttnShape, Backend, Dropout, NoiseSpec, ReparamRule, RowStats};
use dlm_engine::backend::{AdamWStep, CanvasInputs, CanvasState, LossSlots, Moments, Picks, PicksMut, VocabShape};
use dlm_engine::backend::{AttnCall, AttnSaved, Qkv, QkvGrads};
use dlm_engine::backend::{
    EmbedGrads, EmbedShape, EmbedTables, Gemm, LinearGrads, LnGrads, LnParams, LnSaved, LnStats, Residual, RowsShape,
};
use dlm_engine::rdm::noise::{coupled_t, doubled_batch, Example, Reweighting};

const TOL_BF16: f64 = 1e-2;
const TOL_STAT: f64 = 1e-4;

/// Uploads `v` as bf16 and returns the rounded values the CPU reference should use.
fn up(g: &CudaBackend, v: &[f32]) -> (dlm_engine::backend::cuda::CudaBuf, Vec<f32>) {
    (g.upload(v).unwrap(), bf16_round(v))
}

fn down(g: &CudaBackend, b: &dlm_engine::backend::cuda::CudaBuf) -> Vec<f32> {
    g.download(b).unwrap()
}

#[test]
fn starting_without_a_gpu_is_a_clean_error() {
    // Runs everywhere: on a machine without a driver this must be an Err, never a panic.
    if let Some(why) = dlm_engine::backend::cuda::unavailable_reason() {
        let err = CudaBackend::new(0).err().expect("CudaBackend::new succeeded without a GPU");
        eprintln!("no GPU ({why}); CudaBackend::new said: {err:#}");
    } else {
        assert!(CudaBackend::new(usize::MAX).is_err(), "a nonexistent device ordinal must be an error");
    }
}

#[test]
fn memory_ops_round_trip() {
    let Some(g) = gpu("memory_ops_round_trip") else { return };
    let mut rng = fresh_rng("memory_ops_round_trip");
    for n in [1usize, 7, 1000, 65_537] {
        let (a, ar) = up(&g, &normal_vec(&mut rng, n, 3.0));
        assert_eq!(g.len(&a), n);
        assert_exact("upload/download", &down(&g, &a), &ar);
        let (b, br) = up(&g, &normal_vec(&mut rng, n, 1.0));
        let mut c = g.upload(&poison(n)).unwrap();
        g.copy(&a, &mut c).unwrap();
        assert_exact("copy", &down(&g, &c), &ar);
        g.add_assign(&mut c, &b).unwrap();
        let want: Vec<f32> = ar.iter().zip(&br).map(|(x, y)| x + y).collect();
        assert_exact("add_assign bf16", &down(&g, &c), &bf16_round(&want));
        let mut f = g.upload_f32(&ar).unwrap();
        g.add_assign(&mut f, &b).unwrap();
        assert_exact("add_assign into f32", &down(&g, &f), &want);
        g.fill_zero(&mut c).unwrap();
        assert_exact("fill_zero", &down(&g, &c), &vec![0.0; n]);
        assert_exact("zeros", &down(&g, &g.zeros(n).unwrap()), &vec![0.0; n]);
    }
    assert!(g.copy(&g.zeros(3).unwrap(), &mut g.zeros(4).unwrap()).is_err(), "length mismatch must be an error");
}

#[test]
fn philox_matches_cpu_bit_for_bit() {
    let Some(g) = gpu("philox_matches_cpu_bit_for_bit") else { return };
    for (seed, stream, first) in [(0u64, 0u64, 0u64), (42, 7, 5), (u64::MAX, 1 << 40, (1 << 32) - 9), (0x1234_5678_9abc, 3, 1 << 34)] {
        let dev = g.philox_u32_on_device(seed, stream, first, 1003).unwrap();
        let cpu: Vec<u32> = (0..1003).map(|i| dlm_engine::rng::philox_u32(seed, stream, first + i)).collect();
        assert_eq!(dev, cpu, "Philox stream (seed {seed}, stream {stream}) from {first}");
    }
}

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

#[test]
fn embeddings_match_cpu() {
    let Some(g) = gpu("embeddings_match_cpu") else { return };
    let mut rng = fresh_rng("embed");
    let (vocab, max_pos, hidden, tokens) = (1001usize, 67usize, 77usize, 131usize);
    let (word, wr) = up(&g, &normal_vec(&mut rng, vocab * hidden, 1.0));
    let (pos, pr) = up(&g, &normal_vec(&mut rng, max_pos * hidden, 1.0));
    let (typ, tr) = up(&g, &normal_vec(&mut rng, hidden, 1.0));
    // Repeated ids on purpose: the backward pass must sum them.
    let ids: Vec<i32> = (0..tokens).map(|_| rng.int_in(0, 20) as i32).collect();
    let pos_ids: Vec<i32> = (0..tokens).map(|i| (i % max_pos) as i32).collect();
    let (gi, gp) = (g.upload_i32(&ids).unwrap(), g.upload_i32(&pos_ids).unwrap());
    let mut out = g.upload(&poison(tokens * hidden)).unwrap();
    g.embed_fwd(&gi, &gp, EmbedTables { word: &word, pos: &pos, typ: &typ }, &mut out, EmbedShape { tokens, hidden }).unwrap();
    let mut want = vec![0.0; tokens * hidden];
    cpu::embed::embed_fwd(&ids, &pos_ids, EmbedTables { word: &wr, pos: &pr, typ: &tr }, &mut want, EmbedShape { tokens, hidden });
    // Same f32 additions in the same order, one rounding: bit-equal.
    assert_exact("embed_fwd", &down(&g, &out), &bf16_round(&want));

    let (dout, dr) = up(&g, &normal_vec(&mut rng, tokens * hidden, 1.0));
    let (mut dw, mut dwr) = (g.zeros(vocab * hidden).unwrap(), vec![0.0; vocab * hidden]);
    let (mut dp, mut dpr) = (g.zeros(max_pos * hidden).unwrap(), vec![0.0; max_pos * hidden]);
    let (mut dt, mut dtr) = up(&g, &normal_vec(&mut rng, hidden, 1.0));
    // Id 1 and position 1 (the padding index) occur among the inputs and must get no gradient.
    g.embed_bwd(&gi, &gp, &dout, EmbedGrads { word: &mut dw, pos: &mut dp, typ: &mut dt }, EmbedShape { tokens, hidden }, 1).unwrap();
    cpu::embed::embed_bwd(
        &ids,
        &pos_ids,
        &dr,
        EmbedGrads { word: &mut dwr, pos: &mut dpr, typ: &mut dtr },
        EmbedShape { tokens, hidden },
        1,
    );
    assert_close("embed_bwd word", &down(&g, &dw), &dwr, TOL_STAT);
    assert_close("embed_bwd position", &down(&g, &dp), &dpr, TOL_STAT);
    assert_close("embed_bwd type", &down(&g, &dt), &dtr, TOL_STAT);

    let bad = g.upload_i32(&vec![vocab as i32; tokens]).unwrap();
    assert!(
        g.embed_fwd(&bad, &gp, EmbedTables { word: &word, pos: &pos, typ: &typ }, &mut out, EmbedShape { tokens, hidden }).is_err(),
        "an id past the table must be an error"
    );
}

#[test]
fn dropout_masks_match_cpu() {
    let Some(g) = gpu("dropout_masks_match_cpu") else { return };
    let mut rng = fresh_rng("dropout");
    for (n, p, seed, stream) in [(1000usize, 0.1f32, 42u64, 7u64), (70_001, 0.5, 3, 1 << 33)] {
        // Values kept away from zero so that a zero can only come from the mask.
        let v: Vec<f32> = normal_vec(&mut rng, n, 1.0).into_iter().map(|x| x + x.signum() * 0.5).collect();
        let drop = Dropout { p, seed };
        let (mut x, mut want) = up(&g, &v);
        g.dropout_fwd(&mut x, drop, stream).unwrap();
        cpu::elementwise::dropout_apply(&mut want, p, seed, stream);
        assert_exact("dropout_fwd (bf16)", &down(&g, &x), &bf16_round(&want));
        let mut xf = g.upload_f32(&v).unwrap();
        g.dropout_bwd(&mut xf, drop, stream).unwrap();
        let mut wf = v.clone();
        cpu::elementwise::dropout_apply(&mut wf, p, seed, stream);
        assert_exact("dropout_bwd (f32)", &down(&g, &xf), &wf);
    }
}

#[test]
fn gelu_matches_cpu() {
    let Some(g) = gpu("gelu_matches_cpu") else { return };
    let mut rng = fresh_rng("gelu");
    let n = 100_003;
    let (x, xr) = up(&g, &normal_vec(&mut rng, n, 3.0));
    let mut y = g.upload(&poison(n)).unwrap();
    g.gelu_fwd(&x, &mut y).unwrap();
    let mut want = vec![0.0; n];
    cpu::elementwise::gelu_fwd(&xr, &mut want);
    assert_close("gelu_fwd", &down(&g, &y), &want, TOL_BF16);
    let (dy, dyr) = up(&g, &normal_vec(&mut rng, n, 1.0));
    let mut dx = g.upload(&poison(n)).unwrap();
    g.gelu_bwd(&x, &dy, &mut dx).unwrap();
    let mut dwant = vec![0.0; n];
    cpu::elementwise::gelu_bwd(&xr, &dyr, &mut dwant);
    assert_close("gelu_bwd", &down(&g, &dx), &dwant, TOL_BF16);
}

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

/// Right padding of random length per sequence (`padded`), else every key real; with batch > 2
/// and padding the last sequence is all padding.
fn key_mask(rng: &mut dlm_engine::rng::Rng, batch: usize, seq: usize, padded: bool) -> Vec<i32> {
    let mut mask = vec![0i32; batch * seq];
    for b in 0..batch {
        let len = if !padded {
            seq
        } else if batch > 2 && b == batch - 1 {
            0
        } else {
            rng.int_in(1, seq as u64) as usize
        };
        mask[b * seq..b * seq + len].fill(1);
    }
    mask
}

/// lse agrees to f32 rounding (a row of padding only is -inf on both sides).
fn assert_lse_close(tag: &str, got: &[f32], want: &[f32]) {
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let ok = if b.is_infinite() { a == b } else { (a - b).abs() as f64 <= TOL_STAT * (1.0 + b.abs() as f64) };
        assert!(ok, "{tag} lse[{i}]: got {a}, want {b}");
    }
}

/// Odd sizes, head dims from 1 to 128 (multiples of 16 and not, the test models' 8 included),
/// sequences longer than one 64-key tile, an all-padding sequence.
const ATTN_SHAPES: [(usize, usize, usize, usize); 8] =
    [(1, 1, 1, 1), (3, 37, 2, 8), (2, 128, 12, 64), (1, 50, 2, 80), (2, 33, 1, 128), (2, 70, 3, 40), (4, 17, 2, 7), (3, 45, 4, 32)];

#[test]
fn attention_forward_matches_cpu() {
    let Some(g) = gpu("attention_forward_matches_cpu") else { return };
    let mut rng = fresh_rng("attention");
    for &(batch, seq, heads, head_dim) in &ATTN_SHAPES {
        let s = AttnShape { batch, seq, heads, head_dim };
        let n = s.tokens() * s.hidden();
        let (q, qr) = up(&g, &normal_vec(&mut rng, n, 1.0));
        let (k, kr) = up(&g, &normal_vec(&mut rng, n, 1.0));
        let (v, vr) = up(&g, &normal_vec(&mut rng, n, 1.0));
        for (padded, drop) in [
            (true, Dropout::off()),
            (false, Dropout::off()),
            (true, Dropout { p: 0.1, seed: 42 }),
            (false, Dropout { p: 0.5, seed: u64::MAX }),
        ] {
            let mask = key_mask(&mut rng, batch, seq, padded);
            let gm = g.upload_i32(&mask).unwrap();
            let stream = 17 + head_dim as u64;
            let mut out = g.upload(&poison(n)).unwrap();
            let mut lse = g.upload_f32(&poison(batch * heads * seq)).unwrap();
            g.attention_fwd(Qkv { q: &q, k: &k, v: &v }, &gm, &mut out, &mut lse, AttnCall { shape: s, drop, stream }).unwrap();
            let (mut o, mut l) = (vec![0.0; n], vec![0.0; batch * heads * seq]);
            cpu::attention::attention_fwd(Qkv { q: &qr, k: &kr, v: &vr }, &mask, &mut o, &mut l, AttnCall { shape: s, drop, stream });
            let tag = format!("attention {s:?} padded={padded} dropout={}", drop.p);
            assert_close(&format!("{tag} out"), &down(&g, &out), &o, TOL_BF16);
            assert_lse_close(&tag, &down(&g, &lse), &l);
        }
    }
}

/// The dropout mask itself, element by element: with Q = K = 0 every real key gets probability
/// 1/len, and with V_j the j-th unit vector, out[i][j] = keep_ij / len. A zero on one side only is
/// a mask mismatch (bf16 rounding never turns 1/(len·(1-p)) into zero).
#[test]
fn attention_dropout_mask_matches_cpu_exactly() {
    let Some(g) = gpu("attention_dropout_mask_matches_cpu_exactly") else { return };
    let s = AttnShape { batch: 3, seq: 45, heads: 3, head_dim: 64 };
    let n = s.tokens() * s.hidden();
    let mut vv = vec![0.0f32; n];
    for t in 0..s.tokens() {
        for h in 0..s.heads {
            vv[t * s.hidden() + h * s.head_dim + t % s.seq] = 1.0;
        }
    }
    let zeros = g.zeros(n).unwrap();
    let v = g.upload(&vv).unwrap();
    // Fixed lengths (45, 20, 0) keep the dropped count's spread small for the rate check below.
    let mask: Vec<i32> = (0..s.tokens()).map(|i| ((i % s.seq) < [45, 20, 0][i / s.seq]) as i32).collect();
    let gm = g.upload_i32(&mask).unwrap();
    for (p, seed, stream) in [(0.1f32, 3u64, 11u64), (0.5, 0xDEAD_BEEF_F00D, 1 << 35)] {
        let drop = Dropout { p, seed };
        let (mut out, mut lse) = (g.upload(&poison(n)).unwrap(), g.zeros(s.batch * s.heads * s.seq).unwrap());
        g.attention_fwd(Qkv { q: &zeros, k: &zeros, v: &v }, &gm, &mut out, &mut lse, AttnCall { shape: s, drop, stream }).unwrap();
        let (mut o, mut l) = (vec![0.0; n], vec![0.0; s.batch * s.heads * s.seq]);
        cpu::attention::attention_fwd(
            Qkv { q: &vec![0.0; n], k: &vec![0.0; n], v: &vv },
            &mask,
            &mut o,
            &mut l,
            AttnCall { shape: s, drop, stream },
        );
        let got = down(&g, &out);
        let (mut kept, mut dropped) = (0, 0);
        for (i, (&a, &b)) in got.iter().zip(&o).enumerate() {
            assert_eq!(a == 0.0, b == 0.0, "p={p}: mask differs at element {i} (gpu {a}, cpu {b})");
            assert!(!a.is_nan(), "p={p}: element {i} not written");
            if i % s.head_dim < s.seq && mask[(i / s.hidden() / s.seq) * s.seq + i % s.head_dim] != 0 {
                if b == 0.0 {
                    dropped += 1
                } else {
                    kept += 1
                }
            }
        }
        // Both decisions occur, near the expected rate.
        let rate = dropped as f64 / (kept + dropped) as f64;
        assert!((rate - p as f64).abs() < 0.05, "p={p}: dropped {dropped} of {} (rate {rate:.3})", kept + dropped);
    }
}

#[test]
fn attention_backward_matches_cpu() {
    let Some(g) = gpu("attention_backward_matches_cpu") else { return };
    let mut rng = fresh_rng("attention_backward");
    for &(batch, seq, heads, head_dim) in &ATTN_SHAPES {
        let s = AttnShape { batch, seq, heads, head_dim };
        let n = s.tokens() * s.hidden();
        let rows = batch * heads * seq;
        let (q, qr) = up(&g, &normal_vec(&mut rng, n, 1.0));
        let (k, kr) = up(&g, &normal_vec(&mut rng, n, 1.0));
        let (v, vr) = up(&g, &normal_vec(&mut rng, n, 1.0));
        let (dout, dr) = up(&g, &normal_vec(&mut rng, n, 1.0));
        for (padded, drop) in [
            (true, Dropout::off()),
            (false, Dropout::off()),
            (true, Dropout { p: 0.1, seed: 7 }),
            (false, Dropout { p: 0.3, seed: 1 << 40 }),
        ] {
            let mask = key_mask(&mut rng, batch, seq, padded);
            let gm = g.upload_i32(&mask).unwrap();
            let stream = 3 + seq as u64;
            // The forward's outputs from the CPU, given to both sides: this isolates the backward.
            let (mut o, mut l) = (vec![0.0; n], vec![0.0; rows]);
            cpu::attention::attention_fwd(Qkv { q: &qr, k: &kr, v: &vr }, &mask, &mut o, &mut l, AttnCall { shape: s, drop, stream });
            let (out, or) = up(&g, &o);
            let lse = g.upload_f32(&l).unwrap();
            let (mut dq, mut dk, mut dv) = (g.upload(&poison(n)).unwrap(), g.upload(&poison(n)).unwrap(), g.upload(&poison(n)).unwrap());
            g.attention_bwd(
                Qkv { q: &q, k: &k, v: &v },
                &gm,
                AttnSaved { out: &out, lse: &lse },
                &dout,
                QkvGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv },
                AttnCall { shape: s, drop, stream },
            )
            .unwrap();
            let (mut wq, mut wk, mut wv) = (vec![f32::NAN; n], vec![f32::NAN; n], vec![f32::NAN; n]);
            cpu::attention::attention_bwd(
                Qkv { q: &qr, k: &kr, v: &vr },
                &mask,
                AttnSaved { out: &or, lse: &l },
                &dr,
                QkvGrads { dq: &mut wq, dk: &mut wk, dv: &mut wv },
                AttnCall { shape: s, drop, stream },
            );
            let tag = format!("attention_bwd {s:?} padded={padded} dropout={}", drop.p);
            assert_close(&format!("{tag} dq"), &down(&g, &dq), &wq, TOL_BF16);
            assert_close(&format!("{tag} dk"), &down(&g, &dk), &wk, TOL_BF16);
            assert_close(&format!("{tag} dv"), &down(&g, &dv), &wv, TOL_BF16);
        }
    }
    // A head past the kernels' 128 dims is an error, not a wrong answer.
    let s = AttnShape { batch: 1, seq: 2, heads: 1, head_dim: 129 };
    let (z, m) = (g.zeros(258).unwrap(), g.upload_i32(&[1; 2]).unwrap());
    let (mut a, mut b, mut c) = (g.zeros(258).unwrap(), g.zeros(258).unwrap(), g.zeros(258).unwrap());
    let l = g.zeros(2).unwrap();
    assert!(g
        .attention_bwd(
            Qkv { q: &z, k: &z, v: &z },
            &m,
            AttnSaved { out: &z, lse: &l },
            &z,
            QkvGrads { dq: &mut a, dk: &mut b, dv: &mut c },
            AttnCall { shape: s, drop: Dropout::off(), stream: 0 }
        )
        .is_err());
}

/// The re-masking step on canvases of mixed lengths (one empty): random log-probs with ties and
/// −inf, every k from 0 past n, both rules, with and without ranking noise. Everything the
/// kernel computes is exact in f32 except the noise's logf (an ulp from the host's ln at most;
/// the chance that this moves a slot across the cutoff is negligible), so the slots must agree
/// exactly.
#[test]
fn reparam_step_matches_cpu() {
    let Some(g) = gpu("reparam_step_matches_cpu") else { return };
    let mut rng = fresh_rng("reparam_step");
    let lens = [7usize, 1, 0, 64, 33];
    let n: usize = lens.iter().sum();
    let seq = 80;
    let (mut meta, mut at) = (Vec::new(), 0);
    for (b, &l) in lens.iter().enumerate() {
        meta.extend([at as i32, l as i32, (b * seq + 5) as i32]);
        at += l;
    }
    let gmeta = g.upload_i32(&meta).unwrap();
    for (cond, noise) in [(false, false), (true, false), (false, true), (true, true)] {
        let rule = ReparamRule { cond, noise, seed: rng.next_u64(), mask: 9 };
        // Slots: some masked (−inf), some committed with scores; picks with ties and repeats.
        let tokens: Vec<i32> = (0..n).map(|i| if i % 3 == 0 { 9 } else { 10 + (i % 5) as i32 }).collect();
        let masked: Vec<i32> = tokens.iter().map(|&t| (t == 9) as i32).collect();
        let scores: Vec<f32> = masked.iter().map(|&m| if m == 1 { f32::NEG_INFINITY } else { -rng.uniform() * 3.0 }).collect();
        let pick_token: Vec<i32> = (0..n).map(|i| 10 + (i % 4) as i32).collect();
        let pick_lp: Vec<f32> = (0..n)
            .map(|i| match i % 7 {
                0 => -0.5,
                1 => f32::NEG_INFINITY,
                _ => -rng.uniform() * 4.0,
            })
            .collect();
        let ks: [fn(usize) -> usize; 5] = [|_| 0, |l| l / 2, |l| l.saturating_sub(1), |l| l, |l| l + 3];
        for k_of in ks {
            let step: Vec<i32> = lens
                .iter()
                .enumerate()
                .flat_map(|(b, &l)| {
                    let [hi, lo] = pack_seed((b as u64) << 40 | 17);
                    [k_of(l) as i32, hi, lo, (0.7f32 + b as f32).to_bits() as i32]
                })
                .collect();
            let (mut wt, mut ws, mut wm, mut wids) = (tokens.clone(), scores.clone(), masked.clone(), vec![-1i32; lens.len() * seq]);
            cpu::sampler::reparam_step(
                &meta,
                &step,
                Picks { token: &pick_token, logprob: &pick_lp },
                CanvasState { tokens: &mut wt, scores: &mut ws, masked: &mut wm },
                &mut wids,
                rule,
            );
            let (mut gt, mut gm, mut gids) =
                (g.upload_i32(&tokens).unwrap(), g.upload_i32(&masked).unwrap(), g.upload_i32(&vec![-1; lens.len() * seq]).unwrap());
            let mut gs = g.upload_f32(&scores).unwrap();
            let (gpt, gpl, gstep) = (g.upload_i32(&pick_token).unwrap(), g.upload_f32(&pick_lp).unwrap(), g.upload_i32(&step).unwrap());
            g.reparam_step(
                CanvasInputs { meta: &gmeta, n: lens.len(), step: &gstep },
                Picks { token: &gpt, logprob: &gpl },
                CanvasState { tokens: &mut gt, scores: &mut gs, masked: &mut gm },
                &mut gids,
                rule,
            )
            .unwrap();
            let tag = format!("reparam_step cond={cond} noise={noise} k(64)={}", k_of(64));
            assert_eq!(g.read_i32(&gt).unwrap(), wt, "{tag}: tokens");
            assert_eq!(g.read_i32(&gm).unwrap(), wm, "{tag}: masked");
            assert_eq!(g.read_i32(&gids).unwrap(), wids, "{tag}: ids");
            let got = down(&g, &gs);
            assert!(
                got.iter().zip(&ws).all(|(a, b)| a == b || (a.is_infinite() && b.is_infinite() && a.signum() == b.signum())),
                "{tag}: scores {got:?} vs {ws:?}"
            );
        }
    }
}

#[test]
fn q_sample_matches_cpu_bit_for_bit() {
    // The device noise against the CPU twin: same masked ids, positions, targets and weights for
    // random batches (padding, an example with no maskable slot, every reweighting), and mask
    // rates that follow the host's timesteps (P(masked) = t/T for both coupled copies).
    let Some(g) = gpu("q_sample_matches_cpu_bit_for_bit") else { return };
    check_q_sample(&g);
}

#[test]
fn q_sample_check_holds_for_the_cpu_twin_itself() {
    // Runs everywhere: the harness above with the CPU backend on both sides, so its statistics
    // and shape checks are exercised even without a GPU.
    check_q_sample(&CpuBackend::new());
}

fn check_q_sample<B: Backend>(g: &B) {
    let mut rng = fresh_rng("q_sample");
    let (pad, mask_id) = (1, 3);
    let (mut excess, mut maskable_total) = (0.0f64, 0.0f64);
    for (trial, rw) in [Reweighting::Linear, Reweighting::Reciprocal, Reweighting::Constant].into_iter().cycle().take(24).enumerate() {
        let b = 1 + rng.int_in(0, 40) as usize;
        let rows: Vec<Example> = (0..b)
            .map(|i| {
                let len = 2 + rng.int_in(0, 300) as usize;
                let src_len = if i == 0 { len } else { 1 + rng.int_in(0, len as u64 - 2) as usize };
                Example { ids: (0..len).map(|_| 4 + rng.int_in(0, 5000) as i32).collect(), src_len }
            })
            .collect();
        let spec = NoiseSpec { key: rng.next_u64(), steps: [50, 1, 2, 1000][trial % 4], pad, mask_id, reweighting: rw, scale: 0.5 };
        let (batch, src_len) = doubled_batch(&rows, pad);
        let n = batch.ids.len();
        let cpu_be = CpuBackend::new();
        let (mut c_ids, mut c_rows, mut c_tgt, mut c_w) = (batch.ids.clone(), vec![-7; n], vec![-7; n], vec![f32::NAN; n]);
        let nc = cpu_be
            .q_sample(&mut c_ids, batch.seq, &src_len, &spec, LossSlots { rows: &mut c_rows, targets: &mut c_tgt, weights: &mut c_w })
            .unwrap();
        let mut g_ids = g.upload_i32(&batch.ids).unwrap();
        let (mut g_rows, mut g_tgt, mut g_w) =
            (g.upload_i32(&vec![-7; n]).unwrap(), g.upload_i32(&vec![-7; n]).unwrap(), g.upload_f32(&poison(n)).unwrap());
        let ng = g
            .q_sample(&mut g_ids, batch.seq, &src_len, &spec, LossSlots { rows: &mut g_rows, targets: &mut g_tgt, weights: &mut g_w })
            .unwrap();
        let tag = format!("q_sample trial {trial} (B={b}, seq={}, T={}, {rw:?})", batch.seq, spec.steps);
        assert_eq!(ng, nc, "{tag}: masked count");
        assert_eq!(g.read_i32(&g_ids).unwrap(), c_ids, "{tag}: noised ids");
        assert_eq!(&g.read_i32(&g_rows).unwrap()[..nc], &c_rows[..nc], "{tag}: positions");
        assert_eq!(&g.read_i32(&g_tgt).unwrap()[..nc], &c_tgt[..nc], "{tag}: targets");
        assert_exact(&format!("{tag}: weights"), &g.download(&g_w).unwrap()[..nc], &c_w[..nc]);
        for (ex, r) in rows.iter().enumerate() {
            let (ta, tb) = coupled_t(spec.key, ex, spec.steps);
            let maskable = (r.src_len..r.ids.len()).count() as f64;
            for (copy, t) in [(ex, ta), (b + ex, tb)] {
                let row = &c_ids[copy * batch.seq..][..batch.seq];
                let masked = row.iter().filter(|&&x| x == mask_id).count() as f64;
                excess += masked - maskable * t as f64 / spec.steps as f64;
                maskable_total += maskable;
            }
        }
    }
    let rate = excess / maskable_total;
    assert!(rate.abs() < 0.01, "device masks deviate from t/T by {rate} per maskable slot");
    // Bad shapes are errors, not launches.
    let mut short = g.upload_i32(&[5; 10]).unwrap();
    let spec = NoiseSpec { key: 1, steps: 50, pad, mask_id, reweighting: Reweighting::Linear, scale: 1.0 };
    let (mut r, mut t, mut w) = (g.upload_i32(&[0; 10]).unwrap(), g.upload_i32(&[0; 10]).unwrap(), g.zeros(10).unwrap());
    assert!(
        g.q_sample(&mut short, 3, &[1, 1], &spec, LossSlots { rows: &mut r, targets: &mut t, weights: &mut w }).is_err(),
        "10 ids are not 2×2 rows of 3"
    );
}

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

#[test]
fn cross_entropy_matches_cpu() {
    let Some(g) = gpu("cross_entropy_matches_cpu") else { return };
    let mut rng = fresh_rng("cross_entropy");
    for &(rows, vocab, valid, ls) in &[(7usize, 1003usize, 1000usize, 0.0f32), (5, 1003, 1003, 0.1), (3, 250_048, 250_002, 0.1)] {
        let (mut logits, lr) = up(&g, &normal_vec(&mut rng, rows * vocab, 3.0));
        let targets: Vec<i32> = (0..rows).map(|_| rng.int_in(0, valid as u64 - 1) as i32).collect();
        let weights: Vec<f32> = (0..rows).map(|_| rng.uniform() + 0.1).collect();
        let gt = g.upload_i32(&targets).unwrap();
        let loss = g.cross_entropy_fwd_bwd(&mut logits, &gt, &weights, VocabShape { rows, vocab, valid }, ls).unwrap();
        let mut grad = lr.clone();
        let want = cpu::vocab::cross_entropy_fwd_bwd(&mut grad, &targets, &weights, VocabShape { rows, vocab, valid }, ls);
        let tag = format!("cross_entropy {rows}x{vocab} valid {valid} ls {ls}");
        assert_close(&format!("{tag} loss"), &loss, &want, TOL_STAT);
        assert_close(&format!("{tag} dlogits"), &down(&g, &logits), &grad, TOL_BF16);
    }
    let (mut logits, _) = up(&g, &normal_vec(&mut rng, 2 * 10, 1.0));
    let bad = g.upload_i32(&[1, 10]).unwrap();
    assert!(
        g.cross_entropy_fwd_bwd(&mut logits, &bad, &[1.0, 1.0], VocabShape { rows: 2, vocab: 10, valid: 10 }, 0.0).is_err(),
        "a target past the vocabulary must be an error"
    );
}

#[test]
fn vocab_pick_matches_cpu() {
    let Some(g) = gpu("vocab_pick_matches_cpu") else { return };
    let mut rng = fresh_rng("vocab_pick");
    let forbid = [0, 5, 999, 2000, -1];
    for &(rows, vocab, valid) in &[(9usize, 1003usize, 1000usize), (4, 250_048, 250_002), (2, 33, 33)] {
        let mut v = normal_vec(&mut rng, rows * vocab, 2.0);
        // Row 0: a three-way tie for the maximum (the lowest id must win, as torch.argmax).
        for &c in &[17usize, 9, 30] {
            v[c.min(valid - 1)] = 50.0;
        }
        let (logits, lr) = up(&g, &v);
        let gforbid = g.upload_i32(&forbid).unwrap();
        for (temperature, seed) in [(1.0f32, None), (0.7, Some(12345u64)), (1.3, Some(u64::MAX))] {
            // Each row its own noise stream: seeds differ per row, streams count down.
            let noise: Option<Vec<(u64, u32)>> = seed.map(|s| (0..rows).map(|r| (s ^ (r as u64) << 40, (rows - r) as u32)).collect());
            let packed = noise.as_ref().map(|n| pack_gumbel(n));
            let gnoise = packed.as_ref().map(|(s, t)| (g.upload_i32(s).unwrap(), g.upload_i32(t).unwrap()));
            let mut token = g.upload_i32(&vec![-7; rows]).unwrap();
            let mut logprob = g.upload_f32(&poison(rows)).unwrap();
            g.vocab_pick(
                &logits,
                VocabShape { rows, vocab, valid },
                &gforbid,
                temperature,
                gnoise.as_ref().map(|(s, t)| (s, t)),
                PicksMut { token: &mut token, logprob: &mut logprob },
            )
            .unwrap();
            let got = RowStats { token: g.read_i32(&token).unwrap(), logprob: down(&g, &logprob) };
            let want = cpu::sampler::vocab_pick(
                &lr,
                VocabShape { rows, vocab, valid },
                &forbid,
                temperature,
                packed.as_ref().map(|(s, t)| (s.as_slice(), t.as_slice())),
            );
            let tag = format!("vocab_pick {rows}x{vocab} valid {valid} T {temperature} seed {seed:?}");
            for r in 0..rows {
                let (a, b) = (got.token[r] as usize, want.token[r] as usize);
                if a != b {
                    // Only a near-tie may differ (the device logf can differ from the host's in the
                    // last bit): the two candidates' keys must then agree to f32 rounding.
                    let key = |c: usize| match &noise {
                        None => lr[r * vocab + c],
                        Some(n) => lr[r * vocab + c] / temperature + dlm_engine::rng::philox_gumbel(n[r].0, n[r].1 as u64, c as u64),
                    };
                    assert!((key(a) - key(b)).abs() <= 1e-5 * key(b).abs().max(1.0), "{tag} row {r}: token {a} vs {b}");
                    assert!(!forbid.contains(&(a as i32)) && a < valid, "{tag} row {r}: picked excluded id {a}");
                    continue;
                }
                let d = (got.logprob[r] - want.logprob[r]).abs() as f64;
                assert!(
                    d <= TOL_STAT * (1.0 + want.logprob[r].abs() as f64),
                    "{tag} row {r}: logprob {} vs {}",
                    got.logprob[r],
                    want.logprob[r]
                );
            }
        }
    }
}

#[test]
fn optimizer_ops_match_cpu() {
    let Some(g) = gpu("optimizer_ops_match_cpu") else { return };
    let mut rng = fresh_rng("optimizer");
    let n = 100_003;
    let (x, xr) = up(&g, &normal_vec(&mut rng, n, 2.0));
    let want = cpu::adamw::sum_squares(&xr);
    let got = g.sum_squares(&x).unwrap();
    assert!(((got - want) / want).abs() < 1e-9, "sum_squares {got} vs {want}");

    let hp = AdamW::default();
    for f32_grads in [false, true] {
        let (mut p, mut pr) = up(&g, &normal_vec(&mut rng, n, 0.05));
        let (mut m, mut mr) = up(&g, &normal_vec(&mut rng, n, 0.01));
        let vinit: Vec<f32> = normal_vec(&mut rng, n, 0.01).iter().map(|v| v * v).collect();
        let (mut v, mut vr) = up(&g, &vinit);
        for step in 1..=3u64 {
            let gv = normal_vec(&mut rng, n, 0.1);
            let (grad, gr) = if f32_grads { (g.upload_f32(&gv).unwrap(), gv.clone()) } else { up(&g, &gv) };
            // Step 2 clips (a factor below 1 applied as the gradient is read).
            let gs = if step == 2 { 0.37 } else { 1.0 };
            g.adamw(&mut p, &grad, Moments { m: &mut m, v: &mut v }, hp, AdamWStep { lr: 1e-3, step, grad_scale: gs }).unwrap();
            cpu::adamw::adamw(&mut pr, &gr, Moments { m: &mut mr, v: &mut vr }, hp, AdamWStep { lr: 1e-3, step, grad_scale: gs });
        }
        let tag = format!("adamw (f32 grads: {f32_grads})");
        // Un-fused f32 operations in the same order on both sides: bit-equal.
        assert_exact(&format!("{tag} param"), &down(&g, &p), &pr);
        assert_exact(&format!("{tag} m"), &down(&g, &m), &mr);
        assert_exact(&format!("{tag} v"), &down(&g, &v), &vr);
        // The bf16 copy that forward ops read must follow the master.
        let row0 = g.upload_i32(&[0]).unwrap();
        let mut shadow = g.zeros(n).unwrap();
        g.gather_rows(&p, &row0, &mut shadow, 1, n).unwrap();
        assert_exact(&format!("{tag} bf16 copy"), &down(&g, &shadow), &bf16_round(&pr));
    }
}
