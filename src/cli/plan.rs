//! `dlm-engine plan`: the memory plan (`crate::train::memory_plan`) of a model shape as a table or
//! JSON: what sampling and training need per GPU at each ZeRO stage, and whether it fits.

use crate::data::batch::Budget;
use crate::model::ModelConfig;
use crate::train::defaults::TrainingDefaults;
use crate::train::memory_plan::{self as mp, PlanInputs, SampleShape, Zero};
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use std::path::PathBuf;

pub const LONG_ABOUT: &str = "Print the memory each GPU needs to sample and to train a model on the CUDA backend: \
bf16 weights, the f32 master copy, the AdamW moments, the gradients, the activations and the workspaces, at \
ZeRO stages 0 (everything replicated), 1 (master copy and moments sharded over --gpus) and 2 (gradients sharded \
too), and whether that fits an 80 GB H100 and a 141 GB H200 (or --gpu-memory). The counts follow how the \
backend stores each buffer (docs/gpu.md §4); training takes the worst case of every token of the \
doubled micro-batch masked. `train --device cuda` runs the same plan and refuses a run that cannot fit.\n\n\
Example: dlm-engine plan --preset xl --gpus 4 --max-tokens 4096";

#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// A named shape: base, large, xl, xxl (or the small test shapes).
    #[arg(long, conflicts_with = "model", required_unless_present = "model")]
    pub preset: Option<String>,
    /// A model directory: its config.json (and whether model.safetensors has an untied decoder;
    /// its training_defaults.json gives the default --max-tokens).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// GPUs the training is spread over (data parallel: every GPU runs its own micro-batches).
    #[arg(long, default_value_t = 1)]
    pub gpus: usize,
    /// Only this ZeRO stage (0, 1 or 2); default: all three.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub zero: Option<u8>,
    /// Training: token budget per micro-batch per GPU, as `train --max-tokens` (padded length ×
    /// rows, before the coupled doubling). Default: the model's training defaults, else 4096.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Training: sequences per micro-batch per GPU, as `train --batch-size`, instead of --max-tokens.
    #[arg(long, conflicts_with = "max_tokens")]
    pub batch_size: Option<usize>,
    /// Longest training sequence, as `train --max-len` (default: the model's maximum).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Training with `--valid`: add the validation decode's workspace (64 canvases of --max-len).
    #[arg(long)]
    pub validation: bool,
    /// Sampling: canvases per forward batch, as `sample --batch-size`.
    #[arg(long, default_value_t = 32)]
    pub sample_batch_size: usize,
    /// Sampling: tokens per canvas, prompt and target (default: the model's maximum).
    #[arg(long)]
    pub sample_len: Option<usize>,
    /// Memory of one GPU: 80GB (H100), 141GB (H200), or bytes with an optional K/M/G/T suffix
    /// (binary units). Default: both the H100 and the H200 column.
    #[arg(long, value_name = "SIZE")]
    pub gpu_memory: Option<String>,
    /// Print the plan as JSON (bytes) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `--gpu-memory`: a card's name or a size.
pub fn parse_memory(s: &str) -> Result<(String, u64)> {
    match s.to_ascii_lowercase().as_str() {
        "80gb" | "h100" => return Ok((mp::CARDS[0].0.to_string(), mp::CARDS[0].1)),
        "141gb" | "h200" => return Ok((mp::CARDS[1].0.to_string(), mp::CARDS[1].1)),
        _ => {}
    }
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_lowercase() {
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => bail!("--gpu-memory {s}: expected 80GB, 141GB or bytes with an optional K/M/G/T suffix"),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: f64 =
        num.parse().ok().filter(|n: &f64| n.is_finite() && *n > 0.0).with_context(|| {
            format!("--gpu-memory {s}: expected 80GB, 141GB or a positive number of bytes with an optional K/M/G/T suffix")
        })?;
    Ok((format!("{s} GPU"), (n * mult as f64) as u64))
}

pub fn run(a: Args) -> Result<()> {
    crate::util::range::at_least("--gpus", a.gpus as u64, 1)?;
    crate::util::range::at_least("--sample-batch-size", a.sample_batch_size as u64, 1)?;
    let (cfg, untied, defaults) = match (&a.preset, &a.model) {
        (Some(p), _) => (ModelConfig::preset(p)?, false, TrainingDefaults::paper()),
        (None, Some(dir)) => {
            let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
            (cfg, mp::model_untied(dir)?, TrainingDefaults::for_model(dir)?)
        }
        (None, None) => bail!("give --preset or --model"),
    };
    let longest = cfg.max_seq_len();
    let max_len = a.max_len.unwrap_or(longest);
    if max_len < 2 || max_len > longest {
        bail!("--max-len {max_len}: must be in 2..={longest} (the model's longest sequence)");
    }
    let budget = match a.batch_size {
        Some(n) => Budget::Sequences(n),
        None => Budget::Tokens(a.max_tokens.unwrap_or(defaults.max_tokens)),
    };
    if matches!(budget, Budget::Sequences(0) | Budget::Tokens(0)) {
        bail!("--max-tokens and --batch-size must be at least 1");
    }
    let inputs = PlanInputs {
        cfg,
        untied,
        gpus: a.gpus,
        train_tokens: mp::train_tokens(budget, max_len),
        sample: SampleShape { batch: a.sample_batch_size, seq: a.sample_len.unwrap_or(longest) },
        validation: a.validation.then_some(SampleShape { batch: mp::VALIDATION_BATCH, seq: max_len }),
    };
    let plan = mp::plan(&inputs)?;
    let stages: Vec<Zero> = match a.zero {
        Some(z) => vec![Zero::from_level(z)?],
        None => Zero::ALL.to_vec(),
    };
    let cards: Vec<(String, u64)> = match &a.gpu_memory {
        Some(s) => vec![parse_memory(s)?],
        None => mp::CARDS.iter().map(|(n, b)| (n.to_string(), *b)).collect(),
    };
    if a.json {
        // A column: its rows in bytes, the total, and whether it fits each card.
        let column = |b: &mp::Breakdown| -> Result<serde_json::Value> {
            let mut v = serde_json::to_value(b)?;
            v["total"] = b.total().into();
            v["fits"] = cards.iter().map(|(n, bytes)| (n.clone(), serde_json::Value::Bool(b.total() <= *bytes))).collect();
            Ok(v)
        };
        let training = stages
            .iter()
            .map(|z| Ok((format!("zero{}", z.level()), column(plan.training(*z))?)))
            .collect::<Result<serde_json::Map<_, _>>>()?;
        let sampling = column(&plan.sampling)?;
        let out = serde_json::json!({
            "gpus": plan.gpus,
            "params": plan.params,
            "largest_param": plan.largest_param,
            "train_tokens": inputs.train_tokens,
            "train_encoder_tokens": plan.train_encoder_tokens,
            "train_head_rows": plan.train_head_rows,
            "sample": plan.sample,
            "validation": plan.validation,
            "cards": cards.iter().map(|(n, b)| serde_json::json!({"name": n, "bytes": b})).collect::<Vec<_>>(),
            "sampling": sampling,
            "training": training,
        });
        return crate::outln!("{}", serde_json::to_string_pretty(&out)?);
    }
    let (c, b) = (&inputs.cfg, budget);
    let batch = match b {
        Budget::Tokens(n) => format!("--max-tokens {n}"),
        Budget::Sequences(n) => format!("--batch-size {n}"),
    };
    crate::outln!(
        "{} layers, hidden {}, vocabulary {}: {} parameters as stored (vocabulary padded to {})",
        c.layers,
        c.hidden,
        c.vocab_size,
        plan.params,
        c.vocab_size.next_multiple_of(mp::CUDA_VOCAB_ALIGN)
    )?;
    crate::outln!(
        "training: {batch}, --max-len {max_len}: {} encoder tokens per micro-batch (doubled), head on up to {} rows{}",
        plan.train_encoder_tokens,
        plan.train_head_rows,
        if a.validation { ", with the validation decode" } else { "" }
    )?;
    crate::outln!("sampling: {} canvases of {} tokens\n", plan.sample.batch, plan.sample.seq)?;
    crate::outln!("{}", mp::render(&plan, &stages, &cards))
}
