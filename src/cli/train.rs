//! `dlm-engine train`: diffusive adaptation (RDM finetuning) of a masked LM on JSONL pairs, or
//! (`--stage length`) the length predictor over the frozen model (`crate::train::length_stage`).

use super::args::{DataArgs, DeviceArgs};
use super::device::{dispatch, Device, Job};
use super::sample::{decode, DecodeOptions, Output, Request};
use super::train_data::{self, OverlongArg, TrainSpec};
use super::train_dist;
use crate::backend::Backend;
use crate::data::batch::Budget;
use crate::data::jsonl::read_jsonl;
use crate::diffusion::sampler::SamplerConfig;
use crate::metrics::{self, Metric, Tokenize};
use crate::model::shards::parse_size;
use crate::model::{SaveOpts, XlmR};
use crate::rdm::noise::Reweighting;
use crate::tokenizer::Tok;
use crate::train::checkpoint;
use crate::train::defaults::TrainingDefaults;
use crate::train::length_stage::{self, Stage};
use crate::train::run_dir::{self, Mode, RunDir};
use crate::train::schedule::{default_warmup, Schedule};
use crate::train::{AdamWSettings, BatchSource, Summary, TrainConfig, Trainer};
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use std::path::PathBuf;

#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// What to train: `main` (diffusive adaptation of the masked LM) or `length` (the length
    /// predictor that `sample --length predict` uses, over the frozen masked LM: the backbone runs
    /// forward only and its weights stay bit for bit; a model without a predictor gets a new one;
    /// validation reports length accuracy).
    #[arg(long, default_value = "main")]
    pub stage: String,
    /// Model to start from: an HF XLM-R checkpoint directory or one made by `dlm-engine init`.
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    /// Training data: JSONL with {"src","tgt"} or {"inputs","targets"} records. Repeatable:
    /// without ratios the files are concatenated; as FILE:RATIO (every file then needs one) each
    /// sequence picks a file with probability proportional to its ratio (ratios are normalised,
    /// so 7 and 3 equal 0.7 and 0.3) and takes that file's next example, each file cycling
    /// through reshuffled passes (the Flan mixtures of the paper).
    #[arg(long, required = true, num_args = 1.., value_name = "FILE[:RATIO]")]
    pub train: Vec<String>,
    /// Validation data, decoded every `--eval-every` steps (oracle length, argmax).
    #[arg(long)]
    pub valid: Option<PathBuf>,
    /// Run directory: checkpoints (`checkpoint-N/`, `final/`) and `metrics.jsonl`.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue a run exactly: a checkpoint directory, or a run directory (its newest complete checkpoint).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Delete the run already in `--out` (its checkpoints, final model and metrics) and start again.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// With --resume: continue even though settings that change the training (learning rate,
    /// schedule, seed, data files, --model, ...) differ from the ones the run was started with.
    #[arg(long, requires = "resume")]
    pub allow_changes: bool,
    /// Stop after this many optimizer updates.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Stop after this much wall time (e.g. 300s, 45m, 2h); whichever of the limits comes first.
    #[arg(long)]
    pub max_time: Option<String>,
    /// Token budget per micro-batch (padded length × rows, before the coupled doubling).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Sequences per micro-batch (before the coupled doubling), instead of --max-tokens.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches accumulated per update.
    #[arg(long, default_value_t = 1)]
    pub accumulate: usize,
    /// Peak learning rate (default: the model's training_defaults.json, else 5e-5).
    #[arg(long)]
    pub lr: Option<f32>,
    /// warmup-constant (the paper's), linear or inverse-sqrt.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Warmup updates (default: the model's recommendation, else 1% of --max-steps).
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    #[arg(long)]
    pub weight_decay: Option<f32>,
    #[arg(long)]
    pub clip_norm: Option<f32>,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f32,
    #[arg(long, default_value_t = 0.98)]
    pub beta2: f32,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f32,
    /// Dropout on hidden states and attention probabilities.
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Diffusion timesteps T.
    #[arg(long, default_value_t = 50)]
    pub timesteps: u32,
    /// linear (the paper's), reciprocal or constant.
    #[arg(long, default_value = "linear")]
    pub reweighting: String,
    #[arg(long)]
    pub label_smoothing: Option<f32>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Save a checkpoint every N updates (0: only at the end).
    #[arg(long, default_value_t = 1000)]
    pub save_every: u64,
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Largest shard of a checkpoint's weights, as transformers' `max_shard_size` (5GB, 200KB,
    /// 1GiB or a byte count): a bigger model is saved as model-0000i-of-0000N.safetensors shards
    /// with model.safetensors.index.json. May change on `--resume`.
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: String,
    /// Validate every N updates (0: never).
    #[arg(long, default_value_t = 500)]
    pub eval_every: u64,
    /// Denoising steps of validation decoding.
    #[arg(long, default_value_t = 10)]
    pub eval_steps: usize,
    /// At most this many validation examples.
    #[arg(long, default_value_t = 200)]
    pub eval_max: usize,
    /// Log a line (and a metrics.jsonl record) every N updates.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Longest training sequence, source and target together (default: the model's maximum);
    /// longer pairs are handled by --overlong.
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Pairs longer than --max-len: `drop` them (task training) or `truncate-left` (Flan's rule:
    /// keep the last --max-len tokens, the prompt losing its beginning). Counted per file.
    #[arg(long, value_enum, default_value_t = OverlongArg::Drop)]
    pub overlong: OverlongArg,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub run: DeviceArgs,
    /// Train data-parallel on these GPUs of this machine, one process each (e.g. 0,1,2,3; implies
    /// --device cuda): every micro-batch is shared among the GPUs by tokens and the gradients are
    /// summed over NCCL, so N GPUs train as one would on the whole batch. Only rank 0 (the first
    /// GPU) logs and writes checkpoints, which any number of GPUs can resume. Across machines,
    /// start one process per GPU with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
    /// MASTER_ADDR, MASTER_PORT) and --device cuda instead (docs/distributed.md).
    #[arg(long, value_name = "LIST")]
    pub gpus: Option<String>,
    /// Optimizer state sharding over the ranks of a data-parallel run: 0 (every rank keeps the
    /// whole AdamW state) or 1 (ZeRO-1: each rank keeps the f32 master weights and Adam moments
    /// of 1/N of the parameters; the gradients are reduce-scattered and the updated parameters
    /// all-gathered). Checkpoints are the same either way, so a run may resume with either.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub zero: u8,
    /// Data parallel without ZeRO: the gradients of a step's last micro-batch are summed over the
    /// GPUs in buckets of at least this many MiB (f32), each started as soon as the backward pass
    /// has finished its gradients, so the sums overlap the rest of the pass (as PyTorch DDP's
    /// bucket_cap_mb). The result is the same for any size; with --zero 1 the gradients are
    /// reduce-scattered after the pass instead.
    #[arg(long, value_name = "MIB", default_value_t = crate::train::buckets::DEFAULT_BUCKET_MB, value_parser = positive_mib)]
    pub bucket_mb: f64,
    /// No progress bar (log lines only).
    #[arg(long)]
    pub no_progress: bool,
    /// On `--device cuda`: start even though the memory plan (`dlm-engine plan`) says the run does
    /// not fit on the GPU (the plan counts the worst case; the estimate can be off).
    #[arg(long)]
    pub no_memory_check: bool,
}

struct TrainJob {
    args: Args,
    /// Held for the whole run by rank 0 (the lock keeps a second process out); other ranks of a
    /// data-parallel run never write it.
    run_dir: Option<RunDir>,
    /// Rank, world size and the NCCL id of a data-parallel run.
    rank: usize,
    world: usize,
    nccl_id: Option<crate::dist::nccl::UniqueId>,
    model_dir: PathBuf,
    resume_dir: Option<PathBuf>,
    tok: Tok,
    data: Box<dyn BatchSource>,
    /// The `--train` files, for the per-file counts at the end.
    files: Vec<String>,
    valid: Vec<Request>,
    cfg: TrainConfig,
}

impl Job for TrainJob {
    type Out = Summary;
    fn run<B: Backend>(mut self, backend: B) -> Result<Summary> {
        let comm = crate::dist::collective::open(&backend, self.rank, self.world, self.nccl_id)?;
        let lead = self.rank == 0;
        let mut model = XlmR::load_for_training(backend, &self.model_dir)?;
        model.set_save_opts(SaveOpts { max_shard_size: parse_size(&self.args.max_shard_size).context("--max-shard-size")? });
        // `--dropout` (or the training defaults' rate) is the rate of every dropout site; the
        // saved config.json records it, as Hugging Face's training does. The length stage leaves
        // the backbone's configuration as it is (its dropout is the predictor's only).
        if self.cfg.stage == Stage::Main {
            model.set_dropout(self.cfg.dropout);
        }
        if length_stage::prepare(&mut model, self.cfg.stage, self.cfg.seed)? && lead {
            eprintln!("the model has no length predictor: starting a new one (seed {})", self.cfg.seed);
        }
        if lead {
            let ranks = if self.world > 1 { format!(" × {} ranks", self.world) } else { String::new() };
            eprintln!("model {} ({} parameters) on {}{ranks}", self.model_dir.display(), model.param_count(), model.backend().name());
        }
        let (tok, valid, eval_steps, stage) = (&self.tok, &self.valid, self.args.eval_steps, self.cfg.stage);
        let validator = (!valid.is_empty()).then(|| {
            Box::new(move |m: &mut XlmR<B>| match stage {
                Stage::Main => validate(m, tok, valid, eval_steps),
                Stage::Length => validate_lengths(m, tok, valid),
            }) as Box<crate::train::trainer::Validator<'_, B>>
        });
        let mut trainer = Trainer {
            cfg: self.cfg.clone(),
            model,
            tokenizer_path: self.run_dir.as_ref().map_or_else(|| self.model_dir.join("tokenizer.json"), |r| r.path.join("tokenizer.json")),
            data: self.data.as_mut(),
            validator,
            pad: self.tok.pad(),
            mask: self.tok.mask(),
            dist: comm.as_ref(),
        };
        let summary = trainer.run(self.resume_dir.as_deref())?;
        drop(trainer);
        if let Some(used) = self.data.examples_per_file().filter(|_| lead) {
            let total = used.iter().sum::<u64>().max(1) as f64;
            let per: Vec<String> =
                self.files.iter().zip(&used).map(|(f, n)| format!("{f} {n} ({:.1}%)", 100.0 * *n as f64 / total)).collect();
            eprintln!("examples used per file: {}", per.join(", "));
        }
        Ok(summary)
    }
}

/// Decodes the validation set (oracle length, argmax, K steps) and scores it.
pub fn validate<B: Backend>(model: &mut XlmR<B>, tok: &Tok, reqs: &[Request], steps: usize) -> Result<serde_json::Value> {
    let opts =
        DecodeOptions { sampler: SamplerConfig { steps, ..SamplerConfig::default() }, length: None, batch_size: 64, show_steps: false };
    let outs: Vec<Output> = decode(model, tok, reqs, &opts)?;
    let hyps: Vec<&str> = outs.iter().map(|o| o.hyp.as_str()).collect();
    let refs: Vec<&str> = outs.iter().map(|o| o.tgt.as_deref().unwrap_or("")).collect();
    let exact = metrics::report(&hyps, &refs, Metric::Exact, Tokenize::Tok13a, false)?;
    let bleu = metrics::report(&hyps, &refs, Metric::Bleu, Tokenize::Tok13a, false)?;
    Ok(serde_json::json!({ "exact": exact.to_json()["exact"], "bleu": bleu.to_json()["bleu"], "examples": outs.len() }))
}

/// The length predictor's accuracy on the validation set (docs/method.md §5.1): the prompt as the
/// sampler lays it out, the target's token count as `--length oracle` counts it.
pub fn validate_lengths<B: Backend>(model: &mut XlmR<B>, tok: &Tok, reqs: &[Request]) -> Result<serde_json::Value> {
    let max_len = model.config().max_seq_len();
    let mut prompts = Vec::with_capacity(reqs.len());
    let mut lengths = Vec::with_capacity(reqs.len());
    for r in reqs {
        let mut src = tok.encode(&r.src)?;
        src.pop(); // </s>
        if src.len() > max_len {
            src.drain(1..1 + src.len() - max_len);
        }
        prompts.push(src);
        lengths.push(tok.encode(r.tgt.as_deref().unwrap_or(""))?.len().saturating_sub(2));
    }
    Ok(serde_json::to_value(length_stage::length_accuracy(model, &prompts, &lengths, 64)?)?)
}

/// Runs training as the CLI would; returns the summary (used by `demo` too).
/// Every numeric flag in its real range (before anything is read or written).
fn check_flags(a: &Args) -> Result<()> {
    use crate::util::range;
    if let Some(v) = a.lr {
        range::positive("--lr", v)?;
    }
    range::unit("--beta1", a.beta1)?;
    range::unit("--beta2", a.beta2)?;
    range::positive("--adam-eps", a.adam_eps)?;
    if let Some(v) = a.weight_decay {
        range::non_negative("--weight-decay", v)?;
    }
    if let Some(v) = a.clip_norm {
        range::non_negative("--clip-norm (0 turns clipping off)", v)?;
    }
    if let Some(v) = a.dropout {
        range::unit("--dropout", v)?;
    }
    if let Some(v) = a.label_smoothing {
        range::unit("--label-smoothing", v)?;
    }
    range::at_least("--timesteps", a.timesteps as u64, 1)?;
    range::at_least("--accumulate", a.accumulate as u64, 1)?;
    range::at_least("--keep-checkpoints", a.keep_checkpoints as u64, 1)?;
    parse_size(&a.max_shard_size).context("--max-shard-size")?;
    range::at_least("--log-every", a.log_every, 1)?;
    range::at_least("--eval-steps", a.eval_steps as u64, 1)?;
    if let Some(v) = a.max_steps {
        range::at_least("--max-steps", v, 1)?;
    }
    if let Some(v) = a.max_tokens {
        range::at_least("--max-tokens", v as u64, 1)?;
    }
    if let Some(v) = a.batch_size {
        range::at_least("--batch-size", v as u64, 1)?;
        if a.max_tokens.is_some() {
            bail!("--batch-size and --max-tokens are alternatives (sequences or tokens per micro-batch): give one");
        }
    }
    if let Some(v) = a.max_len {
        range::at_least("--max-len", v as u64, 2)?;
    }
    Ok(())
}

pub fn train(mut args: Args) -> Result<Summary> {
    super::device::set_threads(args.run.threads);
    check_flags(&args)?;
    // Every rank must run with the same settings: rank 0 compares them during the rendezvous.
    let settings = format!("{args:?}");
    let place = train_dist::placement(&args.gpus, &args.run.device)?;
    args.run.device = place.device.clone();
    let joined = train_dist::join(&place, &settings)?;
    let (control, nccl_id) = joined.map(|(c, id)| (Some(c), Some(id))).unwrap_or((None, None));
    let result = train_rank(args, &place, nccl_id);
    train_dist::leave(&place, control.as_ref(), result)
}

/// `train` as one rank (or alone): rank 0 locks, checks and writes the run directory.
fn train_rank(args: Args, place: &train_dist::Placement, nccl_id: Option<crate::dist::nccl::UniqueId>) -> Result<Summary> {
    let lead = place.lead();
    let specs = train_data::parse_specs(&args.train)?;
    let stage: Stage = args.stage.parse()?;
    // The run directory is locked before anything of it is read (a resume) and checked to be a
    // run of this tool, or empty, before anything is written.
    let lock = if lead { Some(run_dir::lock(&args.out)?) } else { None };
    let resume_dir = args.resume.as_deref().map(checkpoint::resolve_resume).transpose()?;
    let model_dir: PathBuf = match (&resume_dir, &args.model) {
        (Some(r), _) => r.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => bail!("give --model (or --resume)"),
    };
    let tok = Tok::load(model_dir.join("tokenizer.json"))?;
    let defaults = TrainingDefaults::for_model(&model_dir)?;
    let model_cfg = crate::model::ModelConfig::from_file(&model_dir.join("config.json"))?;
    let (tok_file, cfg_file) = (model_dir.join("tokenizer.json"), model_dir.join("config.json"));
    model_cfg.check_tokenizer(tok.vocab_size(), &tok_file.display().to_string(), &cfg_file.display().to_string())?;
    let max_len = args.max_len.unwrap_or(model_cfg.max_seq_len()).min(model_cfg.max_seq_len());

    let budget = match args.batch_size {
        Some(n) => Budget::Sequences(n),
        None => Budget::Tokens(args.max_tokens.unwrap_or(defaults.max_tokens)),
    };
    let train_data::TrainingData { source: data, note: data_note, examples: n_examples, log: data_log } =
        train_data::load(&tok, &specs, &args.data, max_len, args.overlong, budget, args.seed)?;
    let valid: Vec<Request> = match &args.valid {
        Some(p) => {
            let f = read_jsonl(p, &args.data.jsonl(true))?;
            f.records.into_iter().take(args.eval_max).map(|r| Request { src: r.src, tgt: r.tgt }).collect()
        }
        None => Vec::new(),
    };
    let max_time = args.max_time.as_deref().map(|t| crate::util::parse_duration(t).context("--max-time")).transpose()?;
    let schedule: Schedule = args.schedule.as_deref().unwrap_or(&defaults.schedule).parse()?;
    let warmup = args.warmup_steps.or(defaults.warmup_steps).unwrap_or_else(|| default_warmup(args.max_steps.unwrap_or(1000)));
    let reweighting: Reweighting = args.reweighting.parse()?;
    let cfg = TrainConfig {
        stage,
        lr: args.lr.unwrap_or(defaults.lr),
        schedule,
        warmup_steps: warmup,
        max_steps: args.max_steps,
        max_time,
        accumulate: args.accumulate,
        clip_norm: args.clip_norm.unwrap_or(defaults.clip_norm),
        adamw: AdamWSettings {
            beta1: args.beta1,
            beta2: args.beta2,
            eps: args.adam_eps,
            weight_decay: args.weight_decay.unwrap_or(defaults.weight_decay),
        },
        dropout: args.dropout.unwrap_or(defaults.dropout),
        timesteps: args.timesteps,
        reweighting,
        label_smoothing: args.label_smoothing.unwrap_or(defaults.label_smoothing),
        seed: args.seed,
        save_every: args.save_every,
        keep_checkpoints: args.keep_checkpoints,
        eval_every: if args.valid.is_some() { args.eval_every } else { 0 },
        log_every: args.log_every,
        out_dir: args.out.clone(),
        progress: !args.no_progress,
        zero: args.zero,
        bucket_mb: args.bucket_mb,
    };
    if let (Device::Cuda(n), Stage::Main, false) = (&args.run.device, stage, args.no_memory_check) {
        let zero = crate::train::memory_plan::Zero::from_level(args.zero)?;
        let run = PlannedRun { ordinal: *n, world: place.world, zero, budget, max_len, validation: args.valid.is_some() };
        check_memory(&run, &model_dir, &model_cfg)?;
    }
    // Everything is checked; only now is the run directory touched.
    let mode = match (&args.resume, args.overwrite) {
        (Some(_), _) => Mode::Resume,
        (None, true) => Mode::Overwrite,
        (None, false) => Mode::New,
    };
    let data_record = data_settings(&specs, budget, args.overlong);
    let mut record = serde_json::json!({
        "tool": "dlm-engine",
        "model": model_dir,
        "valid": args.valid,
        "settings": cfg,
    });
    for (k, v) in data_record.as_object().into_iter().flatten() {
        record[k] = v.clone();
    }
    if let Some(ck) = &resume_dir {
        let changes = resume_changes(ck, &args, &cfg, &data_record)?;
        if !changes.is_empty() {
            if !args.allow_changes {
                bail!(
                    "--resume: the run was trained with other settings ({}); give --allow-changes to continue with the new ones",
                    changes.join(", ")
                );
            }
            if lead {
                eprintln!("warning: resuming with changed settings: {}", changes.join(", "));
            }
        }
    }
    // Only rank 0 (or a process alone) holds the lock: it opens the run directory and logs.
    let run_dir = match lock {
        None => None,
        Some(lock) => {
            let run_dir = lock.open(mode, &record)?;
            // The run keeps its own copies of what every checkpoint carries besides the weights, so it
            // never reads from a checkpoint that pruning may delete.
            if run_dir::adopt_file(&run_dir.path, &model_dir, "tokenizer.json")?.is_none() {
                bail!("{}: missing (the model directory needs its tokenizer)", model_dir.join("tokenizer.json").display());
            }
            let defaults_copy = run_dir.path.join("training_defaults.json");
            if run_dir::adopt_file(&run_dir.path, &model_dir, "training_defaults.json")?.is_none() && defaults_copy.is_file() {
                std::fs::remove_file(&defaults_copy).with_context(|| format!("{}: cannot delete", defaults_copy.display()))?;
            }
            for line in &data_log {
                eprintln!("{line}");
            }
            let per_batch = match budget {
                Budget::Tokens(n) => format!("max {n} tokens/batch"),
                Budget::Sequences(n) => format!("{n} sequences/batch"),
            };
            eprintln!(
                "training on {n_examples} examples ({data_note}): lr {:.1e} ({:?}, warmup {}), {per_batch}, T={}, dropout {}, label smoothing {} [{}]",
                cfg.lr, cfg.schedule, cfg.warmup_steps, cfg.timesteps, cfg.dropout, cfg.label_smoothing, defaults.note
            );
            Some(run_dir)
        }
    };
    let files = if run_dir.is_some() { specs.iter().map(|s| s.path.display().to_string()).collect() } else { Vec::new() };
    let (device, threads) = (place.device.clone(), args.run.threads);
    let job =
        TrainJob { args, run_dir, rank: place.rank, world: place.world, nccl_id, model_dir, resume_dir, tok, data, files, valid, cfg };
    dispatch(&device, threads, job)
}

/// What the memory check needs to know of a run on one of its GPUs.
struct PlannedRun {
    ordinal: usize,
    world: usize,
    zero: crate::train::memory_plan::Zero,
    budget: Budget,
    max_len: usize,
    validation: bool,
}

/// Refuses, before anything is allocated, a masked-LM training run whose memory plan says it
/// cannot fit on CUDA device `run.ordinal` (one rank of `run.world`, at its ZeRO stage).
fn check_memory(run: &PlannedRun, model_dir: &std::path::Path, cfg: &crate::model::ModelConfig) -> Result<()> {
    use crate::train::memory_plan::{self as mp, PlanInputs, SampleShape};
    let (device, bytes) = crate::backend::cuda::device_memory(run.ordinal)?;
    let whole = mp::train_tokens(run.budget, run.max_len);
    // A rank takes a contiguous share of each micro-batch's rows by tokens: at most its even
    // share plus one sequence (`dist::split`).
    let share = if run.world > 1 { (whole.div_ceil(run.world) + run.max_len).min(whole) } else { whole };
    let inputs = PlanInputs {
        cfg: cfg.clone(),
        untied: mp::model_untied(model_dir)?,
        gpus: run.world,
        train_tokens: share,
        sample: SampleShape { batch: 1, seq: run.max_len },
        validation: run.validation.then_some(SampleShape { batch: mp::VALIDATION_BATCH, seq: run.max_len }),
    };
    mp::check_fits(&inputs, run.zero, &device, bytes)
}

pub fn run(args: Args) -> Result<()> {
    if let Some(gpus) = train_dist::needs_launch(&args.gpus)? {
        return crate::dist::launch::run(&gpus);
    }
    let quiet = std::env::var("RANK").is_ok_and(|r| r.trim() != "0");
    let s = train(args)?;
    if !quiet {
        print_summary(&s);
    }
    Ok(())
}

pub fn print_summary(s: &Summary) {
    eprintln!(
        "done: {} steps in {:.1}s (stopped by {}), final loss {:.4}; model saved to {}",
        s.steps,
        s.elapsed_s,
        s.stopped_by,
        s.final_loss,
        s.checkpoint.display()
    );
}

/// The data settings `run.json` records and a resume may not change: the files, their
/// normalised ratios (null: concatenated), the batch budget and the over-long rule.
fn data_settings(specs: &[TrainSpec], budget: Budget, overlong: OverlongArg) -> serde_json::Value {
    let (max_tokens, batch_size) = match budget {
        Budget::Tokens(n) => (Some(n), None),
        Budget::Sequences(n) => (None, Some(n)),
    };
    serde_json::json!({
        "train": specs.iter().map(|s| &s.path).collect::<Vec<_>>(),
        "ratios": train_data::normalised_ratios(specs),
        "max_tokens": max_tokens,
        "batch_size": batch_size,
        "overlong": overlong,
    })
}

/// The settings that alter the training and that a resume would change, as `name old → new`:
/// the optimizer and objective settings recorded in the checkpoint, and the model and the data
/// settings (`data_settings`) recorded in the run's `run.json` (where the run has one; a key an
/// older run.json lacks is no change).
fn resume_changes(checkpoint: &std::path::Path, args: &Args, cfg: &TrainConfig, data: &serde_json::Value) -> Result<Vec<String>> {
    let old = checkpoint::load_state(checkpoint)?.settings;
    let new = serde_json::to_value(cfg)?;
    let mut changes = Vec::new();
    let mut differ = |name: &str, was: Option<&serde_json::Value>, now: &serde_json::Value| {
        if let Some(was) = was.filter(|w| !same_setting(w, now)) {
            changes.push(format!("{name} {was} → {now}"));
        }
    };
    for (key, flag) in [
        ("stage", "--stage"),
        ("lr", "--lr"),
        ("schedule", "--schedule"),
        ("warmup_steps", "--warmup-steps"),
        ("accumulate", "--accumulate"),
        ("clip_norm", "--clip-norm"),
        ("adamw", "AdamW (--beta1/--beta2/--adam-eps/--weight-decay)"),
        ("dropout", "--dropout"),
        ("timesteps", "--timesteps"),
        ("reweighting", "--reweighting"),
        ("label_smoothing", "--label-smoothing"),
        ("seed", "--seed"),
    ] {
        differ(flag, old.get(key), &new[key]);
    }
    let run_file = args.out.join(crate::train::run_dir::RUN_FILE);
    if let Ok(text) = std::fs::read_to_string(&run_file) {
        let run: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", run_file.display()))?;
        for (key, flag) in [
            ("train", "--train"),
            ("ratios", "--train ratios"),
            ("max_tokens", "--max-tokens"),
            ("batch_size", "--batch-size"),
            ("overlong", "--overlong"),
        ] {
            differ(flag, run.get(key), &data[key]);
        }
        if let Some(model) = &args.model {
            // The same directory spelled another way is no change.
            let canonical = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            let was = run.get("model").and_then(|m| m.as_str()).map(|m| serde_json::json!(canonical(std::path::Path::new(m))));
            differ("--model", was.as_ref(), &serde_json::json!(canonical(model)));
        }
    }
    Ok(changes)
}

/// Equal settings: integers exactly, other numbers as the f32 they were (a written f32 read back
/// as f64 may differ in its last digit), everything else structurally.
fn same_setting(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_u64(), y.as_u64(), x.as_i64(), y.as_i64()) {
            (Some(x), Some(y), _, _) => x == y,
            (_, _, Some(x), Some(y)) => x == y,
            _ => x.as_f64().map(|v| v as f32) == y.as_f64().map(|v| v as f32),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_setting(x, y)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_setting(v, w))),
        _ => a == b,
    }
}

/// `--bucket-mb`: a positive number of MiB.
fn positive_mib(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("expected a positive number of MiB, not `{s}`")),
    }
}
