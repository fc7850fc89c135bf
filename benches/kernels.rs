//! Per-op microbenchmarks at XLM-R base shapes: the CUDA backend when a GPU is there, else the CPU
//! backend at reduced sizes (so that `cargo bench` stays short on a laptop).
//!
//! Each measurement queues `iters` calls and then waits for the device once, so on the GPU it is
//! the kernels' throughput including launch cost (small shapes are launch-bound; CUDA graphs come
//! later). Inputs are random, never zeros (zeros can run faster than real data).
//!
//! `cargo bench --bench kernels` (filter with e.g. `-- attention`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dlm_engine::backend::cpu::CpuBackend;
use dlm_engine::backend::cuda::CudaBackend;
use dlm_engine::backend::{pack_gumbel, AdamW, AttnShape, Backend, Dropout, NoiseSpec};
use dlm_engine::backend::{AdamWStep, LossSlots, Moments, PicksMut, VocabShape};
use dlm_engine::backend::{AttnCall, AttnSaved, Qkv, QkvGrads};
use dlm_engine::backend::{EmbedShape, EmbedTables, Gemm, LnParams, LnStats, Residual, RowsShape};
use dlm_engine::rdm::noise::Reweighting;
use dlm_engine::rng::Rng;
use std::time::{Duration, Instant};

const HIDDEN: usize = 768;
const FFN: usize = 3072;
const HEADS: usize = 12;
const SEQ: usize = 128;

fn random(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed, 99);
    (0..n).map(|_| r.normal() * scale).collect()
}

/// Shapes for one backend: the GPU runs the real ones, the CPU a fraction of the rows.
struct Sizes {
    /// Token rows of a batch-64 step (64 × 128) and of a batch-1 step.
    rows_big: usize,
    rows_small: usize,
    /// Rows through the LM head / sampler pass (the 64 target positions per sequence).
    pick_rows_big: usize,
    pick_rows_small: usize,
    batch_big: usize,
    adam_params: usize,
    /// LM-head rows (padded to a multiple of 64) and the real vocabulary inside them.
    vocab_padded: usize,
    vocab: usize,
}

fn bench_backend<B: Backend>(c: &mut Criterion, be: &B, sync: &dyn Fn(), sz: &Sizes) {
    let label = be.name();
    eprintln!("benchmarking {label}");
    if label.contains(dlm_engine::backend::cuda::SOFTWARE_DEVICE_MARK) {
        eprintln!("warning: the software CUDA device runs the kernels on the CPU: these timings mean nothing");
    }
    let mut group = c.benchmark_group(if label.starts_with("cuda") { "cuda" } else { "cpu" });
    group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    let timed =
        |group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, bytes: u64, op: &mut dyn FnMut()| {
            group.throughput(Throughput::Bytes(bytes));
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        op();
                    }
                    sync();
                    t.elapsed()
                })
            });
        };

    // Dense layers (bytes: bf16 operands read + output written once).
    for (tag, rows) in [("b64", sz.rows_big), ("b1", sz.rows_small)] {
        for (what, n, k) in [("qkv_768x768", HIDDEN, HIDDEN), ("ffn_up_768x3072", FFN, HIDDEN)] {
            let x = be.upload(&random(rows * k, 1.0, 1)).unwrap();
            let w = be.upload(&random(n * k, 0.02, 2)).unwrap();
            let b = be.upload(&random(n, 0.02, 3)).unwrap();
            let mut y = be.zeros(rows * n).unwrap();
            let bytes = 2 * (rows * k + n * k + rows * n) as u64;
            timed(&mut group, &format!("linear/linear_fwd/{what}/{tag}"), bytes, &mut || {
                be.linear_fwd(&x, &w, Some(&b), &mut y, Gemm { m: rows, n, k }).unwrap()
            });
        }
    }
    let (vocab_padded, vocab) = (sz.vocab_padded, sz.vocab);
    let w = be.upload(&random(vocab_padded * HIDDEN, 0.02, 5)).unwrap();
    for (tag, rows) in [("b64", sz.pick_rows_big), ("b1", sz.pick_rows_small)] {
        let x = be.upload(&random(rows * HIDDEN, 1.0, 4)).unwrap();
        let mut y = be.zeros(rows * vocab_padded).unwrap();
        let bytes = 2 * (rows * HIDDEN + vocab_padded * HIDDEN + rows * vocab_padded) as u64;
        timed(&mut group, &format!("linear/linear_fwd/lm_head_{vocab_padded}/{tag}"), bytes, &mut || {
            be.linear_fwd(&x, &w, None, &mut y, Gemm { m: rows, n: vocab_padded, k: HIDDEN }).unwrap()
        });
        let forbid = be.upload_i32(&[0, 1, 2, 3, vocab as i32 - 1]).unwrap();
        let (seeds, streams) = pack_gumbel(&(0..rows as u32).map(|r| (7, r)).collect::<Vec<_>>());
        let (seeds, streams) = (be.upload_i32(&seeds).unwrap(), be.upload_i32(&streams).unwrap());
        let (mut token, mut logprob) = (be.upload_i32(&vec![0; rows]).unwrap(), be.zeros(rows).unwrap());
        let bytes_pick = 2 * (rows * vocab_padded) as u64;
        timed(&mut group, &format!("sampler/vocab_pick/argmax/{tag}"), bytes_pick, &mut || {
            be.vocab_pick(
                &y,
                VocabShape { rows, vocab: vocab_padded, valid: vocab },
                &forbid,
                1.0,
                None,
                PicksMut { token: &mut token, logprob: &mut logprob },
            )
            .unwrap();
        });
        timed(&mut group, &format!("sampler/vocab_pick/gumbel/{tag}"), bytes_pick, &mut || {
            be.vocab_pick(
                &y,
                VocabShape { rows, vocab: vocab_padded, valid: vocab },
                &forbid,
                0.9,
                Some((&seeds, &streams)),
                PicksMut { token: &mut token, logprob: &mut logprob },
            )
            .unwrap();
        });
        let targets = be.upload_i32(&(0..rows as i32).collect::<Vec<_>>()).unwrap();
        let weights = vec![1.0f32; rows];
        timed(&mut group, &format!("vocab/cross_entropy/{tag}"), 2 * bytes_pick, &mut || {
            be.cross_entropy_fwd_bwd(&mut y, &targets, &weights, VocabShape { rows, vocab: vocab_padded, valid: vocab }, 0.0).unwrap();
        });
    }

    // Memory-bound row ops on a batch-64 step.
    let rows = sz.rows_big;
    let n = rows * HIDDEN;
    let x = be.upload(&random(n, 1.0, 6)).unwrap();
    let r = be.upload(&random(n, 1.0, 7)).unwrap();
    let gamma = be.upload(&random(HIDDEN, 1.0, 8)).unwrap();
    let beta = be.upload(&random(HIDDEN, 1.0, 9)).unwrap();
    let (mut out, mut sum) = (be.zeros(n).unwrap(), be.zeros(n).unwrap());
    let (mut mean, mut rstd) = (be.zeros(rows).unwrap(), be.zeros(rows).unwrap());
    timed(&mut group, "layernorm/add_layernorm_fwd/b64", 2 * 4 * n as u64, &mut || {
        be.add_layernorm_fwd(
            &x,
            Some(Residual { residual: &r, sum: &mut sum }),
            LnParams { gamma: &gamma, beta: &beta, eps: 1e-5 },
            &mut out,
            LnStats { mean: &mut mean, rstd: &mut rstd },
            RowsShape { rows, cols: HIDDEN },
        )
        .unwrap()
    });
    let xf = be.upload(&random(rows * FFN, 1.0, 10)).unwrap();
    let mut yf = be.zeros(rows * FFN).unwrap();
    timed(&mut group, "elementwise/gelu_fwd/b64", 2 * 2 * (rows * FFN) as u64, &mut || be.gelu_fwd(&xf, &mut yf).unwrap());
    let mut d = be.upload(&random(n, 1.0, 11)).unwrap();
    timed(&mut group, "elementwise/dropout_fwd/b64", 2 * 2 * n as u64, &mut || {
        be.dropout_fwd(&mut d, Dropout { p: 0.1, seed: 1 }, 2).unwrap()
    });
    let ids = be.upload_i32(&(0..rows as i32).map(|i| (i * 7919) % vocab as i32).collect::<Vec<_>>()).unwrap();
    let pos_ids = be.upload_i32(&(0..rows as i32).map(|i| 2 + i % SEQ as i32).collect::<Vec<_>>()).unwrap();
    let word = be.upload(&random(vocab * HIDDEN, 0.02, 12)).unwrap();
    let pos = be.upload(&random(514 * HIDDEN, 0.02, 13)).unwrap();
    let typ = be.upload(&random(HIDDEN, 0.02, 14)).unwrap();
    timed(&mut group, "embed/embed_fwd/b64", 2 * 3 * n as u64, &mut || {
        be.embed_fwd(
            &ids,
            &pos_ids,
            EmbedTables { word: &word, pos: &pos, typ: &typ },
            &mut out,
            EmbedShape { tokens: rows, hidden: HIDDEN },
        )
        .unwrap()
    });

    // The training noise over a doubled batch of `rows` tokens (64-token sources), including its
    // read-back of the masked count.
    let examples = rows / (2 * SEQ);
    let clean: Vec<i32> = (0..rows as i32).map(|i| 4 + (i * 7919) % 5000).collect();
    let mut noisy = be.upload_i32(&clean).unwrap();
    let (mut lr, mut lt, mut lw) =
        (be.upload_i32(&vec![0; rows]).unwrap(), be.upload_i32(&vec![0; rows]).unwrap(), be.zeros(rows).unwrap());
    let spec = NoiseSpec { key: 5, steps: 50, pad: 1, mask_id: 3, reweighting: Reweighting::Linear, scale: 1.0, first_example: 0 };
    timed(&mut group, "noise/q_sample/b64", 4 * 4 * rows as u64, &mut || {
        be.q_sample(&mut noisy, SEQ, &vec![64; examples], &spec, LossSlots { rows: &mut lr, targets: &mut lt, weights: &mut lw }).unwrap();
    });
    // Attention: batch-64 and batch-1 steps of 128 tokens, with padding in every other sequence.
    for (tag, batch) in [("b64", sz.batch_big), ("b1", 1)] {
        let s = AttnShape { batch, seq: SEQ, heads: HEADS, head_dim: HIDDEN / HEADS };
        let n = s.tokens() * s.hidden();
        let (q, k, v) =
            (be.upload(&random(n, 1.0, 15)).unwrap(), be.upload(&random(n, 1.0, 16)).unwrap(), be.upload(&random(n, 1.0, 17)).unwrap());
        let mask: Vec<i32> = (0..batch * SEQ).map(|i| ((i / SEQ).is_multiple_of(2) || i % SEQ < 100) as i32).collect();
        let m = be.upload_i32(&mask).unwrap();
        let (mut o, mut l) = (be.zeros(n).unwrap(), be.zeros(batch * HEADS * SEQ).unwrap());
        timed(&mut group, &format!("attention/attention_fwd/{tag}"), 2 * 4 * n as u64, &mut || {
            be.attention_fwd(Qkv { q: &q, k: &k, v: &v }, &m, &mut o, &mut l, AttnCall { shape: s, drop: Dropout::off(), stream: 0 })
                .unwrap()
        });
        let drop = Dropout { p: 0.1, seed: 3 };
        timed(&mut group, &format!("attention/attention_fwd_dropout/{tag}"), 2 * 4 * n as u64, &mut || {
            be.attention_fwd(Qkv { q: &q, k: &k, v: &v }, &m, &mut o, &mut l, AttnCall { shape: s, drop, stream: 0 }).unwrap()
        });
        // Backward from the dropout forward's outputs (bytes: q, k, v, out, dout read, dq, dk, dv written).
        let dout = be.upload(&random(n, 1.0, 20)).unwrap();
        let (mut dq, mut dk, mut dv) = (be.zeros(n).unwrap(), be.zeros(n).unwrap(), be.zeros(n).unwrap());
        timed(&mut group, &format!("attention/attention_bwd_dropout/{tag}"), 2 * 8 * n as u64, &mut || {
            be.attention_bwd(
                Qkv { q: &q, k: &k, v: &v },
                &m,
                AttnSaved { out: &o, lse: &l },
                &dout,
                QkvGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv },
                AttnCall { shape: s, drop, stream: 0 },
            )
            .unwrap()
        });
    }

    // Optimizer over a slab of parameters (f32 master + moments after the first step).
    let np = sz.adam_params;
    let (mut p, g) = (be.upload(&random(np, 0.02, 18)).unwrap(), be.upload(&random(np, 0.001, 19)).unwrap());
    let (mut m1, mut m2) = (be.zeros(np).unwrap(), be.zeros(np).unwrap());
    let mut step = 0u64;
    timed(&mut group, "adamw/adamw_step", (np * (4 * 3 * 2 + 2 + 2)) as u64, &mut || {
        step += 1;
        be.adamw(&mut p, &g, Moments { m: &mut m1, v: &mut m2 }, AdamW::default(), AdamWStep { lr: 1e-4, step, grad_scale: 0.5 }).unwrap()
    });
    group.finish();
}

fn kernels(c: &mut Criterion) {
    match CudaBackend::new(0) {
        Ok(gpu) => {
            let sizes = Sizes {
                rows_big: 64 * SEQ,
                rows_small: SEQ,
                pick_rows_big: 64 * 64,
                pick_rows_small: 64,
                batch_big: 64,
                adam_params: 1 << 26,
                vocab_padded: 250_048,
                vocab: 250_002,
            };
            bench_backend(c, &gpu, &|| gpu.synchronize().unwrap(), &sizes);
        }
        Err(e) => {
            eprintln!("no GPU ({e:#}): benchmarking the CPU backend at reduced sizes");
            let sizes = Sizes {
                rows_big: 4 * SEQ,
                rows_small: SEQ,
                pick_rows_big: 16,
                pick_rows_small: 2,
                batch_big: 4,
                adam_params: 1 << 20,
                vocab_padded: 25_024,
                vocab: 25_002,
            };
            bench_backend(c, &CpuBackend::new(), &|| {}, &sizes);
        }
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
