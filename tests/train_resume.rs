//! Training resumes exactly: 2N steps straight and N + resume + N give the same losses, and a
//! tiny model's loss falls on a learnable task.

mod common;
use dlm_engine::backend::cpu::CpuBackend;
use dlm_engine::data::{Budget, Mixture, Source};
use dlm_engine::model::{ModelConfig, XlmR};
use dlm_engine::rdm::noise::Example;
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
        let batches = (0..5).map(|_| (0..4).map(|_| common::copy_example(&mut rng, 2, 5, 5, 30)).collect()).collect();
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
    tiny_model_on(CpuBackend::new())
}

fn tiny_model_on(backend: CpuBackend) -> XlmR<CpuBackend> {
    let mut cfg = ModelConfig::preset("micro").unwrap();
    cfg.vocab_size = 32;
    XlmR::random(backend, cfg, 1).unwrap()
}

fn tokenizer_file(dir: &Path) -> std::path::PathBuf {
    // The checkpoint copies the tokenizer file verbatim; any file stands in for it here.
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, "{}").unwrap();
    p
}

/// Losses of a straight run of 2n steps, of its first n steps, and of n more steps resumed
/// from the checkpoint the first run left.
fn straight_first_resumed(backend: CpuBackend) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    straight_first_resumed_with(backend, Cycle::new)
}

fn straight_first_resumed_with<D: BatchSource>(backend: CpuBackend, data: impl Fn() -> D) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer_file(tmp.path());
    let n = 6;
    let run = |out: &str, steps: u64, model: XlmR<CpuBackend>, resume: Option<&Path>| {
        let mut data = data();
        let mut t = Trainer {
            cfg: config(&tmp.path().join(out), steps, 3e-3),
            model,
            tokenizer_path: tok.clone(),
            data: &mut data,
            validator: None,
            pad: 1,
            mask: 31,
            dist: &dlm_engine::dist::Solo,
        };
        t.run(resume).unwrap().losses
    };
    let straight = run("a", 2 * n, tiny_model_on(backend.clone()), None);
    let first = run("b", n, tiny_model_on(backend.clone()), None);
    let ck = tmp.path().join("b/final");
    let resumed = run("b", 2 * n, XlmR::load(backend, &ck).unwrap(), Some(&ck));
    assert_eq!(straight.len() as u64, 2 * n);
    (straight, first, resumed)
}

#[test]
fn resume_continues_exactly() {
    let (straight, first, resumed) = straight_first_resumed(CpuBackend::new());
    let n = first.len();
    assert_eq!(&straight[..n], &first[..]);
    assert_eq!(&straight[n..], &resumed[..], "resumed losses differ from the straight run");
}

/// With the head padded as on the GPU (32 ids → 64 columns), checkpoints hold the unpadded
/// tensors, resuming is still exact, and the losses are those of the unpadded model.
#[test]
fn padded_head_trains_and_resumes_like_unpadded() {
    assert_eq!(tiny_model_on(CpuBackend::with_vocab_align(64)).head_vocab(), 64);
    let (straight, first, resumed) = straight_first_resumed(CpuBackend::with_vocab_align(64));
    let n = first.len();
    assert_eq!(&straight[..n], &first[..]);
    assert_eq!(&straight[n..], &resumed[..], "resumed losses differ from the straight run");
    let (plain, _, _) = straight_first_resumed(CpuBackend::new());
    for (i, (a, b)) in straight.iter().zip(&plain).enumerate() {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "step {i}: padded loss {a} vs unpadded {b}");
    }
}

/// Two copy-task files mixed 3:1 by sequence, 3 rows per micro-batch: the mixture's position
/// (its pick RNG and each file's pass and index) is saved with the checkpoint, so a resumed run
/// draws the examples, and so has the losses, of the run that never stopped.
fn two_file_mixture() -> Mixture {
    let mut rng = dlm_engine::rng::Rng::new(5, 5);
    let mut file = |name: &str, count: usize, max_n: u64, weight: f64| Source {
        name: name.into(),
        examples: (0..count).map(|_| common::copy_example(&mut rng, 2, max_n, 5, 30)).collect(),
        weight,
    };
    let sources = vec![file("short.jsonl", 7, 3, 3.0), file("long.jsonl", 4, 6, 1.0)];
    Mixture::new(sources, Budget::Sequences(3), 7).unwrap()
}

#[test]
fn mixture_resume_continues_exactly() {
    let (straight, first, resumed) = straight_first_resumed_with(CpuBackend::new(), two_file_mixture);
    let n = first.len();
    assert_eq!(&straight[..n], &first[..]);
    assert_eq!(&straight[n..], &resumed[..], "resumed losses differ from the straight run");
    // The data really is the mixture's: another seed draws other examples, hence other losses.
    let (other, _, _) = straight_first_resumed_with(CpuBackend::new(), || {
        let m = two_file_mixture();
        Mixture::new(m.sources().to_vec(), Budget::Sequences(3), 8).unwrap()
    });
    assert_ne!(straight, other);
}

#[test]
fn tiny_model_loss_falls() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer_file(tmp.path());
    let mut data = Cycle::new();
    let mut t = Trainer {
        cfg: config(tmp.path(), 150, 5e-3),
        model: tiny_model(),
        tokenizer_path: tok,
        data: &mut data,
        validator: None,
        pad: 1,
        mask: 31,
        dist: &dlm_engine::dist::Solo,
    };
    let losses = t.run(None).unwrap().losses;
    let head: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let tail: f64 = losses[losses.len() - 10..].iter().sum::<f64>() / 10.0;
    assert!(tail < 0.6 * head, "loss did not fall: first 10 steps {head:.3}, last 10 {tail:.3}");
}

/// Issue 16, case 4: a loss that is not finite for `MAX_NONFINITE_STEPS` consecutive updates
/// stops training with an error naming the last good checkpoint, and no checkpoint of the
/// broken stretch is written.
#[test]
fn a_loss_that_stays_nan_stops_training_and_keeps_the_last_good_checkpoint() {
    use dlm_engine::train::trainer::MAX_NONFINITE_STEPS;
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer_file(tmp.path());
    let out = tmp.path().join("run");
    let run = |model: XlmR<CpuBackend>, steps: u64, resume: Option<&Path>| {
        let mut data = Cycle::new();
        let mut cfg = config(&out, steps, 3e-3);
        cfg.save_every = 2;
        cfg.keep_checkpoints = 10;
        let mut t = Trainer {
            cfg,
            model,
            tokenizer_path: tok.clone(),
            data: &mut data,
            validator: None,
            pad: 1,
            mask: 31,
            dist: &dlm_engine::dist::Solo,
        };
        t.run(resume)
    };
    run(tiny_model(), 4, None).unwrap();
    // Resume from the good final checkpoint with a poisoned weight: every loss is NaN.
    let ck = out.join("final");
    let mut model = XlmR::load(CpuBackend::new(), &ck).unwrap();
    let i = model.param_names().iter().position(|n| n.ends_with("lm_head.dense.weight")).unwrap();
    let mut v = model.download_param(i, &model.values()[i]).unwrap();
    v[0] = f32::NAN;
    model.set_value(i, &v).unwrap();
    let before = std::fs::read(ck.join("model.safetensors")).unwrap();
    let err = run(model, 40, Some(&ck)).unwrap_err().to_string();
    assert!(err.contains(&format!("{MAX_NONFINITE_STEPS} consecutive steps")) && err.contains("step 9"), "{err}");
    assert!(err.contains("the last good checkpoint is") && err.contains("final"), "{err}");
    assert_eq!(std::fs::read(ck.join("model.safetensors")).unwrap(), before, "final/ kept");
    let cps: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(cps, ["checkpoint-2"], "no checkpoint written during the NaN steps");
}
