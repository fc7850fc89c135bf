//! `dlm-engine bench sample|train`: throughput of the real sampling step and training step at a
//! preset shape with random weights, on any backend. Lines are machine-readable
//! (`<workload> <ms> ms/step ...`), so scripts/gpu-check.sh can put them beside PyTorch's.

use super::device::{dispatch, Job};
use crate::backend::{Backend, Dropout};
use crate::diffusion::sampler::{generate, SamplerConfig, SpecialIds};
use crate::model::{ModelConfig, XlmR};
use crate::rdm::noise::{doubled_batch, Example, NoiseSpec, Reweighting};
use crate::rng::Rng;
use crate::train::optim::Optimizer;
use anyhow::{bail, Result};
use clap::{Args as ClapArgs, Subcommand};
use std::time::Instant;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// Time RDM sampling steps (forward over the canvas, LM head on the target slots, pick, re-mask).
    Sample(Shape),
    /// Time RDM training steps (coupled noise, forward, head on masked rows, backward, AdamW).
    Train(Shape),
}

#[derive(ClapArgs, Debug, Clone)]
pub struct Shape {
    /// Model shape: base, large, xl, xxl, tiny, small, ...
    #[arg(long, default_value = "base")]
    pub preset: String,
    /// Change the preset's number of layers ...
    #[arg(long)]
    pub layers: Option<usize>,
    /// ... its hidden size (the FFN becomes 4× this; the heads stay as many) ...
    #[arg(long)]
    pub hidden: Option<usize>,
    /// ... or its vocabulary.
    #[arg(long)]
    pub vocab: Option<usize>,
    /// Batch sizes to time, comma-separated (default: 1,64 on CUDA, 1 on the CPU).
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 64)]
    pub target_len: usize,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Peak TFLOP/s of the device, for MFU (default: 789, the H100/H200 bf16 figure measured with
    /// PyTorch; none on the CPU unless given).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    #[command(flatten)]
    pub run: super::args::DeviceArgs,
}

impl Shape {
    /// The preset with the overrides, checked.
    fn config(&self) -> Result<ModelConfig> {
        let mut cfg = ModelConfig::preset(&self.preset)?;
        if let Some(l) = self.layers {
            cfg.layers = l;
        }
        if let Some(h) = self.hidden {
            cfg.hidden = h;
            cfg.intermediate = 4 * h;
        }
        if let Some(v) = self.vocab {
            cfg.vocab_size = v;
        }
        cfg.validate("bench flags")?;
        Ok(cfg)
    }

    fn name(&self) -> String {
        let mut n = self.preset.clone();
        for (tag, v) in [("L", self.layers), ("H", self.hidden), ("V", self.vocab)] {
            if let Some(v) = v {
                n.push_str(&format!("-{tag}{v}"));
            }
        }
        n
    }
}

struct BenchJob {
    shape: Shape,
    train: bool,
}

/// Canvas rows of random token ids: `[<s>] prompt… <mask>×target [</s>]`.
fn prompts(cfg: &ModelConfig, b: usize, s: &Shape, rng: &mut Rng) -> Vec<Vec<i32>> {
    (0..b)
        .map(|_| {
            let mut p = vec![cfg.bos_id];
            p.extend((1..s.prompt_len).map(|_| rng.int_in(4, cfg.vocab_size.min(250_000) as u64 - 2) as i32));
            p
        })
        .collect()
}

impl Job for BenchJob {
    type Out = ();
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let s = &self.shape;
        let cfg = s.config()?;
        let name = backend.name();
        let is_cpu = name.starts_with("cpu");
        let batches = if s.batch.is_empty() {
            if is_cpu {
                vec![1]
            } else {
                vec![1, 64]
            }
        } else {
            s.batch.clone()
        };
        if s.prompt_len + s.target_len + 1 > cfg.max_seq_len() {
            bail!("{} + {} tokens do not fit the {} preset's {} positions", s.prompt_len, s.target_len, s.preset, cfg.max_seq_len());
        }
        let peak = s.peak_tflops.or(if is_cpu { None } else { Some(789.0) });
        let mut model = XlmR::random(backend, cfg.clone(), 0)?;
        eprintln!("{} ({} parameters) on {name}", s.name(), model.param_count());
        if name.contains(crate::backend::cuda::SOFTWARE_DEVICE_MARK) {
            eprintln!(
                "warning: this is the software CUDA device of the tests, which runs the kernels on the CPU: its timings mean nothing"
            );
        }
        let mut rng = Rng::new(1, 1);
        let mask = cfg.vocab_size as i32 - 1;
        for &b in &batches {
            let key = format!("{}_{}_B{b}_L{}", if self.train { "train" } else { "sample" }, s.name(), s.prompt_len + s.target_len);
            let p = prompts(&cfg, b, s, &mut rng);
            let ms = if self.train { time_train(&mut model, &p, s, mask, &mut rng)? } else { time_sample(&mut model, &p, s, mask)? };
            let tokens = (b * (s.prompt_len + s.target_len)) as f64;
            let tps = tokens / (ms / 1e3) * if self.train { 2.0 } else { 1.0 };
            let extra = match (self.train, peak) {
                (true, Some(pk)) => format!("  MFU {:.1}%", train_flops(&cfg, b, s) / (ms / 1e3) / (pk * 1e12) * 100.0),
                (true, None) => String::new(),
                (false, _) => format!("  graph {}", if model.sampling_step_recorded() { "yes" } else { "no" }),
            };
            crate::outln!("{key} {ms:.3} ms/step  {tps:.0} tokens/s{extra}")?;
        }
        Ok(())
    }
}

fn time_sample<B: Backend>(model: &mut XlmR<B>, prompts: &[Vec<i32>], s: &Shape, mask: i32) -> Result<f64> {
    let special = SpecialIds { bos: model.config().bos_id, pad: model.config().pad_id, eos: model.config().eos_id, mask };
    let lengths = vec![s.target_len; prompts.len()];
    let run = |m: &mut XlmR<B>, k: usize| -> Result<f64> {
        let cfg = SamplerConfig { steps: k, ..SamplerConfig::default() };
        let t = Instant::now();
        generate(m, prompts, &lengths, special, &cfg, prompts.len(), None)?;
        Ok(t.elapsed().as_secs_f64() * 1e3 / k as f64)
    };
    if s.warmup > 0 {
        run(model, s.warmup)?;
    }
    run(model, s.steps.max(1))
}

fn time_train<B: Backend>(model: &mut XlmR<B>, prompts: &[Vec<i32>], s: &Shape, mask: i32, rng: &mut Rng) -> Result<f64> {
    let rows: Vec<Example> = prompts
        .iter()
        .map(|p| {
            let mut ids = p.clone();
            ids.extend((0..s.target_len - 1).map(|_| rng.int_in(4, 1000) as i32));
            ids.push(model.config().eos_id);
            Example { ids, src_len: s.prompt_len }
        })
        .collect();
    let mut opt = Optimizer::new(model, Default::default())?;
    let (pad, mut total) = (model.config().pad_id, 0.0);
    for i in 0..s.warmup + s.steps.max(1) {
        let t = Instant::now();
        let spec = NoiseSpec {
            key: rng.next_u64(),
            steps: 50,
            pad,
            mask_id: mask,
            reweighting: Reweighting::Linear,
            scale: 1.0,
            first_example: 0,
        };
        let (batch, src_len) = doubled_batch(&rows, pad);
        model.zero_grads()?;
        model.noised_loss_and_grad(&batch, &src_len, &spec, Dropout { p: 0.1, seed: i as u64 }, 0.0)?;
        opt.update(model, 1e-5, Some(1.0))?;
        model.backend().synchronize()?;
        if i >= s.warmup {
            total += t.elapsed().as_secs_f64() * 1e3;
        }
    }
    Ok(total / s.steps.max(1) as f64)
}

/// Model FLOPs of one training step: 6·N·tokens for the encoder's dense layers (the coupled
/// batch doubles the rows), attention scores and values, and the head on about half the target
/// slots (the mean masking rate of the coupled pair).
fn train_flops(cfg: &ModelConfig, b: usize, s: &Shape) -> f64 {
    let (h, f, l) = (cfg.hidden as f64, cfg.intermediate as f64, cfg.layers as f64);
    let t = (s.prompt_len + s.target_len) as f64;
    let rows = 2.0 * b as f64;
    let dense = 6.0 * l * (4.0 * h * h + 2.0 * h * f) * rows * t;
    let attn = 3.0 * l * 4.0 * rows * t * t * h;
    let head = 6.0 * (h * h + h * cfg.vocab_size as f64) * rows * s.target_len as f64 * 0.5;
    dense + attn + head
}

pub fn run(a: Args) -> Result<()> {
    let (shape, train) = match a.what {
        What::Sample(s) => (s, false),
        What::Train(s) => (s, true),
    };
    let run = shape.run.clone();
    dispatch(&run.device, run.threads, BenchJob { shape, train })
}
