//! Training resumes exactly: 2N steps straight and N + resume + N give the same losses, and a
//! tiny model's loss falls on a learnable task.

mod common;
use dlm_engine::backend::cpu::CpuBackend;
use dlm_engine::diffusion::noise::Example;
use dlm_engine::model::{ModelConfig, XlmR};
use dlm_engine::train::{BatchSource, TrainConfig, Trainer};
use std::path::Path;

/// Cycles through fixed batches of a copy task: target = source.
struct Cycle {
    batches: Vec<Vec<Example>>,
    at: usize,
}

impl Cycle {
    fn new() -> Self {
        let mut rng = dlm_engine::rng::Rng::new(4, 4);
        let batches = (0..5)
            .map(|_| {
                (0..4).map(|_| common::copy_example(&mut rng, 2, 5, 5, 30)).collect()
            })
            .collect();
        Cycle { batches, at: 0 }
    }
}

impl BatchSource for Cycle {
    fn next_batch(&mut self) -> anyhow::Result<Vec<Example>> {
        let b = self.batches[self.at % self.batches.len()].clone();
        self.at += 1;
        Ok(b)
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "at": self.at })
    }
    fn restore(&mut self, s: &serde_json::Value) -> anyhow::Result<()> {
        self.at = s["at"].as_u64().unwrap() as usize;
        Ok(())
    }
}

fn config(out: &Path, steps: u64, lr: f32) -> TrainConfig {
    common::small_train_config(out, steps, lr, 0.1)
}

fn tiny_model() -> XlmR<CpuBackend> {
    let mut cfg = ModelConfig::preset("micro").unwrap();
    cfg.vocab_size = 32;
    XlmR::random(CpuBackend::new(), cfg, 1).unwrap()
}

fn tokenizer_file(dir: &Path) -> std::path::PathBuf {
    // The checkpoint copies the tokenizer file verbatim; any file stands in for it here.
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, "{}").unwrap();
    p
}

#[test]
fn resume_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer_file(tmp.path());
    let n = 6;
    let straight = {
        let mut data = Cycle::new();
        let mut t = Trainer { cfg: config(&tmp.path().join("a"), 2 * n, 3e-3), model: tiny_model(), tokenizer_path: tok.clone(), data: &mut data, validator: None, pad: 1, mask: 31 };
        t.run(None).unwrap().losses
    };
    let first = {
        let mut data = Cycle::new();
        let mut t = Trainer { cfg: config(&tmp.path().join("b"), n, 3e-3), model: tiny_model(), tokenizer_path: tok.clone(), data: &mut data, validator: None, pad: 1, mask: 31 };
        t.run(None).unwrap().losses
    };
    let resumed = {
        let ck = tmp.path().join("b/final");
        let model = XlmR::load(CpuBackend::new(), &ck).unwrap();
        let mut data = Cycle::new();
        let mut t = Trainer { cfg: config(&tmp.path().join("b"), 2 * n, 3e-3), model, tokenizer_path: tok.clone(), data: &mut data, validator: None, pad: 1, mask: 31 };
        t.run(Some(&ck)).unwrap().losses
    };
    assert_eq!(straight.len() as u64, 2 * n);
    assert_eq!(&straight[..n as usize], &first[..]);
    assert_eq!(&straight[n as usize..], &resumed[..], "resumed losses differ from the straight run");
}

#[test]
fn tiny_model_loss_falls() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer_file(tmp.path());
    let mut data = Cycle::new();
    let mut t = Trainer { cfg: config(tmp.path(), 150, 5e-3), model: tiny_model(), tokenizer_path: tok, data: &mut data, validator: None, pad: 1, mask: 31 };
    let losses = t.run(None).unwrap().losses;
    let head: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let tail: f64 = losses[losses.len() - 10..].iter().sum::<f64>() / 10.0;
    assert!(tail < 0.6 * head, "loss did not fall: first 10 steps {head:.3}, last 10 {tail:.3}");
}
