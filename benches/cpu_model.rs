//! Forward + backward of a small XLM-R-shaped model on the CPU backend, under criterion (for
//! tracking the CPU kernels; `bash scripts/bench-cpu.sh` compares whole training and sampling
//! steps with PyTorch CPU).
//!
//! Shape: preset `tiny` (post-LN, 2 layers, hidden 128, 4 heads, FFN 512) with a 1000-id
//! vocabulary, batch 16 × 32 tokens, MLM head on 25% of the positions.

use criterion::{criterion_group, criterion_main, Criterion};
use dlm_engine::backend::cpu::CpuBackend;
use dlm_engine::backend::Dropout;
use dlm_engine::model::{Batch, LossRows, ModelConfig, XlmR};

pub const BATCH: usize = 16;
pub const SEQ: usize = 32;
pub const VOCAB: usize = 1000;

fn setup() -> (XlmR<CpuBackend>, Batch, LossRows) {
    let mut cfg = ModelConfig::preset("tiny").unwrap();
    cfg.vocab_size = VOCAB;
    let model = XlmR::random(CpuBackend::new(), cfg, 0).unwrap();
    let mut rng = dlm_engine::rng::Rng::new(1, 2);
    let ids: Vec<i32> = (0..BATCH * SEQ).map(|_| rng.int_in(4, VOCAB as u64 - 1) as i32).collect();
    let rows: Vec<i32> = (0..(BATCH * SEQ) as i32).step_by(4).collect();
    let targets: Vec<i32> = rows.iter().map(|_| rng.int_in(4, VOCAB as u64 - 1) as i32).collect();
    let w = 1.0 / rows.len() as f32;
    (model, Batch { ids, batch: BATCH, seq: SEQ }, LossRows { weights: vec![w; rows.len()], rows, targets })
}

fn bench(c: &mut Criterion) {
    let (mut model, batch, loss) = setup();
    let all: Vec<i32> = (0..(BATCH * SEQ) as i32).step_by(4).collect();
    c.bench_function("cpu tiny forward (16x32, head on 25%)", |b| b.iter(|| model.logits(&batch, &all).unwrap()));
    c.bench_function("cpu tiny forward+backward (16x32, head on 25%)", |b| {
        b.iter(|| {
            model.zero_grads().unwrap();
            model.loss_and_grad(&batch, &loss, Dropout::off(), 0.0).unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
