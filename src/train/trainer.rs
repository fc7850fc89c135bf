//! The training loop: batches → coupled noise → forward/backward → AdamW (diffusive adaptation),
//! or batches → frozen backbone → length predictor → AdamW on the predictor alone
//! (`Stage::Length`, `super::length_stage`), with accumulation, schedules, stop by steps or time,
//! progress, metrics JSONL, checkpoints and exact resume.

use super::buckets::Buckets;
use super::checkpoint::{self, TrainerState};
use super::length_stage::{self, Stage};
use super::optim::Optimizer;
use super::schedule::Schedule;
use crate::backend::{AdamW, Backend, Dropout};
use crate::dist::{self, Collective};
use crate::model::{GradsReady, XlmR};
use crate::rdm::noise::{self, Example, NoiseSpec, Reweighting};
use crate::rng::{philox_u32, Rng};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where training batches come from. Its position is saved in checkpoints.
pub trait BatchSource {
    /// The next batch of clean sequences.
    fn next_batch(&mut self) -> Result<Vec<Example>>;
    fn state(&self) -> serde_json::Value;
    fn restore(&mut self, state: &serde_json::Value) -> Result<()>;
    /// Examples taken from each training file so far, in `--train` order, where the source
    /// tracks them (a ratio mixture); logged with every step line.
    fn examples_per_file(&self) -> Option<Vec<u64>> {
        None
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TrainConfig {
    /// What trains: the masked LM (diffusive adaptation) or the length predictor.
    pub stage: Stage,
    pub lr: f32,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    pub max_steps: Option<u64>,
    #[serde(skip)]
    pub max_time: Option<Duration>,
    /// Micro-batches per optimizer update.
    pub accumulate: usize,
    pub clip_norm: f32,
    pub adamw: AdamWSettings,
    /// Dropout during training (hidden and attention); 0 turns it off.
    pub dropout: f32,
    /// Number of diffusion timesteps T.
    pub timesteps: u32,
    pub reweighting: Reweighting,
    pub label_smoothing: f32,
    pub seed: u64,
    pub save_every: u64,
    pub keep_checkpoints: usize,
    pub eval_every: u64,
    pub log_every: u64,
    pub out_dir: PathBuf,
    pub progress: bool,
    /// Optimizer sharding over the ranks of a data-parallel run: 0 (none) or 1 (ZeRO-1,
    /// `super::zero`); alone it changes nothing.
    #[serde(default)]
    pub zero: u8,
    /// Data parallel without ZeRO: the gradient sums start, in buckets of at least this many MiB,
    /// while the backward pass of a step's last micro-batch goes on (`super::buckets`).
    pub bucket_mb: f64,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct AdamWSettings {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl From<AdamWSettings> for AdamW {
    fn from(a: AdamWSettings) -> Self {
        AdamW { beta1: a.beta1, beta2: a.beta2, eps: a.eps, weight_decay: a.weight_decay }
    }
}

/// One line of the metrics file.
#[derive(Clone, Debug, Serialize)]
pub struct StepLog {
    pub step: u64,
    pub loss: f64,
    pub lr: f32,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    pub skipped_steps: u64,
    /// Examples taken from each `--train` file so far (ratio mixtures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub examples_per_file: Option<Vec<u64>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub final_loss: f64,
    pub elapsed_s: f64,
    pub checkpoint: PathBuf,
    pub stopped_by: String,
    /// Loss of every update, in order (the resume test compares these).
    #[serde(skip)]
    pub losses: Vec<f64>,
}

/// Training stops with an error after this many consecutive updates whose loss is not finite.
pub const MAX_NONFINITE_STEPS: u64 = 5;

/// Called every `eval_every` steps with the model; returns metrics to log (e.g. exact match).
pub type Validator<'a, B> = dyn FnMut(&mut XlmR<B>) -> Result<serde_json::Value> + 'a;

pub struct Trainer<'a, B: Backend> {
    pub cfg: TrainConfig,
    pub model: XlmR<B>,
    pub tokenizer_path: PathBuf,
    pub data: &'a mut dyn BatchSource,
    pub validator: Option<Box<Validator<'a, B>>>,
    pub pad: i32,
    pub mask: i32,
    /// The other ranks of a data-parallel run (`&dist::Solo` alone): each rank trains on its share
    /// of every micro-batch, gradients and losses are summed over the ranks, and only rank 0
    /// writes the run directory.
    pub dist: &'a dyn Collective<B>,
}

/// The dropout seed of a micro-batch on a rank. Rank 0's is the single-process one; every other
/// rank draws its own masks (the masks are per position in the rank's share, so equal seeds would
/// give every rank the same masks).
fn dropout_seed(seed: u64, step: u64, micro: usize, rank: usize) -> u64 {
    let (s0, s1) = (0xD0 + ((rank as u64) << 16), 0xD1 + ((rank as u64) << 16));
    ((philox_u32(seed, s0, step * 1024 + micro as u64) as u64) << 32) | philox_u32(seed, s1, step * 1024 + micro as u64) as u64
}

impl<'a, B: Backend> Trainer<'a, B> {
    /// Runs until `max_steps` or `max_time`, whichever comes first; resumes from `resume` when
    /// given (a checkpoint directory written by an earlier run).
    pub fn run(&mut self, resume: Option<&Path>) -> Result<Summary> {
        let cfg = self.cfg.clone();
        let (rank, world) = (self.dist.rank(), self.dist.world());
        let lead = rank == 0;
        if cfg.max_steps.is_none() && cfg.max_time.is_none() {
            bail!("give --max-steps or --max-time (or both): training needs a stopping point");
        }
        let mut opt = if cfg.zero >= 1 && world > 1 {
            Optimizer::sharded(&mut self.model, cfg.adamw.into(), self.dist)?
        } else {
            Optimizer::new(&self.model, cfg.adamw.into())?
        };
        let mut state = TrainerState {
            step: 0,
            rng: Rng::new(cfg.seed, 0x7157),
            data: self.data.state(),
            tokens_seen: 0,
            skipped_steps: 0,
            elapsed_secs: 0.0,
            settings: serde_json::to_value(&cfg)?,
        };
        if let Some(dir) = resume {
            state = checkpoint::load_state(dir)?;
            // The CLI has checked (or been allowed) any change: record what the run now uses.
            state.settings = serde_json::to_value(&cfg)?;
            opt.load(&self.model, &dir.join(checkpoint::OPTIMIZER_FILE))?;
            self.data.restore(&state.data)?;
            if opt.step != state.step {
                bail!("{}: optimizer step {} disagrees with trainer step {}", dir.display(), opt.step, state.step);
            }
        }
        // Plain data parallel sums the gradients in buckets during the last backward pass of each
        // step; ZeRO-1 reduce-scatters them after it, in the optimizer.
        let mut buckets = if world > 1 && !opt.is_sharded() {
            let bytes = self.model.with_trainable_mut(|be, _, grads| Ok(grads.iter().map(|g| be.len(g) * 4).collect()))?;
            Some(Buckets::new(Buckets::cap_bytes(cfg.bucket_mb), bytes))
        } else {
            None
        };
        let dist = self.dist;
        let mut metrics = if lead { Some(open_run_dir(&cfg.out_dir, state.step)?) } else { None };
        let total = cfg.max_steps.unwrap_or(u64::MAX);
        let bar = if lead { self.progress_bar(&cfg, state.step) } else { None };
        let start = Instant::now();
        let base_elapsed = state.elapsed_secs;
        let mut losses = Vec::new();
        let mut bad_streak = 0u64;
        let mut window = (0.0f64, 0u64, 0u64, Instant::now()); // loss sum, count, tokens, since
        let stopped_by;
        loop {
            if state.step >= total {
                stopped_by = "max-steps".to_string();
                break;
            }
            if let Some(t) = cfg.max_time {
                // Rank 0's clock decides for all ranks, so that they stop at the same step.
                let mut up = [if lead && start.elapsed() >= t { 1.0 } else { 0.0 }];
                if world > 1 {
                    self.dist.sum_host(self.model.backend(), &mut up)?;
                }
                if up[0] > 0.0 {
                    stopped_by = "max-time".to_string();
                    break;
                }
            }
            let lr = cfg.schedule.lr(cfg.lr, state.step, cfg.warmup_steps, total);
            self.model.zero_grads()?;
            let mut step_loss = 0.0f64;
            let mut step_tokens = 0u64;
            for micro in 0..cfg.accumulate {
                let global = self.data.next_batch()?;
                // Every rank reads the same global batch and trains on its share of the rows.
                let lens: Vec<usize> = global.iter().map(|r| r.ids.len()).collect();
                let mine = dist::split::share(&lens, world, rank);
                let rows = &global[mine.clone()];
                let drop = if cfg.dropout > 0.0 {
                    Dropout { p: cfg.dropout, seed: dropout_seed(cfg.seed, state.step, micro, rank) }
                } else {
                    Dropout::off()
                };
                // The objectives average over the rows they are given: a share's average, scaled
                // by its part of the batch, sums over the ranks to the whole batch's.
                let scale = 1.0 / cfg.accumulate as f32 * (rows.len() as f32 / global.len().max(1) as f32);
                // Drawn on every rank, with or without rows, so the run's RNG stays in step.
                let key = if cfg.stage == Stage::Main { state.rng.next_u64() } else { 0 };
                // Gradients are final only in the last micro-batch's backward pass: only it starts buckets.
                let hooked = micro + 1 == cfg.accumulate && buckets.is_some();
                let mut launch = |be: &B, grads: &mut [B::Buf], ready: &[usize]| -> Result<()> {
                    for bucket in buckets.as_mut().map(|b| b.ready(ready)).transpose()?.unwrap_or_default() {
                        dist.all_reduce_bucket(be, grads, &bucket)?;
                    }
                    Ok(())
                };
                let (loss, tokens) = match cfg.stage {
                    _ if rows.is_empty() => {
                        // No backward pass here: start the buckets the other ranks' passes start.
                        if hooked && cfg.stage == Stage::Main {
                            let groups = self.model.grad_ready_groups();
                            self.model.with_trainable_mut(|be, _, grads| groups.iter().try_for_each(|g| launch(be, grads, g)))?;
                        }
                        (0.0, 0)
                    }
                    Stage::Main => {
                        // Each micro-batch's noise is a pure function of one key from the run's
                        // RNG, so the device draws it and a resumed run draws the same one; a
                        // row's noise depends on its place in the global batch, not the share.
                        let spec = NoiseSpec {
                            key,
                            steps: cfg.timesteps,
                            pad: self.pad,
                            mask_id: self.mask,
                            reweighting: cfg.reweighting,
                            scale,
                            first_example: mine.start as u64,
                        };
                        let (batch, src_len) = noise::doubled_batch(rows, self.pad);
                        let hook: Option<GradsReady<'_, B>> = if hooked { Some(&mut launch) } else { None };
                        let loss = self.model.noised_loss_and_grad_reporting(&batch, &src_len, &spec, drop, cfg.label_smoothing, hook)?.0;
                        (loss, rows.iter().map(|r| r.ids.len() as u64).sum::<u64>())
                    }
                    Stage::Length => length_stage::micro_step(&mut self.model, rows, drop, scale)?,
                };
                step_loss += loss as f64;
                step_tokens += tokens;
            }
            if world > 1 {
                // The gradients (the last buckets; a sharded optimizer reduce-scatters them
                // itself), the loss and the tokens of the whole batch, on every rank alike.
                if let Some(b) = buckets.as_mut() {
                    let rest = b.rest();
                    self.model.with_trainable_mut(|be, _, grads| {
                        if let Some(rest) = rest {
                            dist.all_reduce_bucket(be, grads, &rest)?;
                        }
                        dist.finish_buckets(be)
                    })?;
                }
                let mut sums = [step_loss, step_tokens as f64];
                self.dist.sum_host(self.model.backend(), &mut sums)?;
                (step_loss, step_tokens) = (sums[0], sums[1] as u64);
            }
            let info = opt.update(&mut self.model, lr, Some(cfg.clip_norm))?;
            state.step += 1;
            state.tokens_seen += step_tokens;
            if info.skipped || !step_loss.is_finite() {
                state.skipped_steps += 1;
            }
            bad_streak = if step_loss.is_finite() { 0 } else { bad_streak + 1 };
            if bad_streak >= MAX_NONFINITE_STEPS {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                let kept = checkpoint::resolve_resume(&cfg.out_dir)
                    .map(|p| format!("the last good checkpoint is {}", p.display()))
                    .unwrap_or_else(|_| "no checkpoint was written".to_string());
                bail!(
                    "the loss was not finite (NaN or infinite) for {bad_streak} consecutive steps, up to step {}; training stopped \
                     ({kept}); lower --lr or check the data",
                    state.step
                );
            }
            losses.push(step_loss);
            window.0 += step_loss;
            window.1 += 1;
            window.2 += step_tokens;
            state.elapsed_secs = base_elapsed + start.elapsed().as_secs_f64();
            if let Some(b) = &bar {
                b.set_position(state.step);
                let tps = window.2 as f64 / window.3.elapsed().as_secs_f64().max(1e-9);
                b.set_message(format!("loss {step_loss:.4}  {tps:.0} tok/s  lr {lr:.2e}"));
            }
            if let Some(metrics) = metrics.as_mut().filter(|_| state.step.is_multiple_of(cfg.log_every) || state.step == total) {
                let secs = window.3.elapsed().as_secs_f64().max(1e-9);
                let log = StepLog {
                    step: state.step,
                    loss: window.0 / window.1 as f64,
                    lr,
                    grad_norm: info.grad_norm,
                    tokens_per_s: window.2 as f64 / secs,
                    elapsed_s: state.elapsed_secs,
                    skipped_steps: state.skipped_steps,
                    examples_per_file: self.data.examples_per_file(),
                };
                writeln!(metrics, "{}", serde_json::to_string(&log)?)?;
                let line = format!(
                    "step {:>6}  loss {:.4}  lr {:.2e}  grad-norm {:.3}  {:.0} tok/s",
                    log.step, log.loss, log.lr, log.grad_norm, log.tokens_per_s
                );
                match &bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
                window = (0.0, 0, 0, Instant::now());
            }
            if let Some(metrics) = metrics.as_mut().filter(|_| cfg.eval_every > 0 && state.step.is_multiple_of(cfg.eval_every)) {
                self.validate(metrics, state.step, bar.as_ref())?;
            }
            if cfg.save_every > 0 && state.step.is_multiple_of(cfg.save_every) && state.step < total && bad_streak == 0 {
                // Every rank takes part in gathering sharded moments; rank 0 writes.
                opt.gather(&mut self.model)?;
                if lead {
                    state.data = self.data.state();
                    let dir = cfg.out_dir.join(format!("checkpoint-{}", state.step));
                    checkpoint::save(&dir, &self.model, &opt, &state, &self.tokenizer_path)?;
                    checkpoint::prune(&cfg.out_dir, cfg.keep_checkpoints)?;
                }
            }
        }
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        state.data = self.data.state();
        state.elapsed_secs = base_elapsed + start.elapsed().as_secs_f64();
        let dir = cfg.out_dir.join("final");
        opt.gather(&mut self.model)?;
        if lead {
            checkpoint::save(&dir, &self.model, &opt, &state, &self.tokenizer_path)?;
        }
        let final_loss =
            losses.iter().rev().take(cfg.log_every as usize).sum::<f64>() / losses.len().clamp(1, cfg.log_every as usize) as f64;
        Ok(Summary { steps: state.step, final_loss, elapsed_s: state.elapsed_secs, checkpoint: dir, stopped_by, losses })
    }

    fn validate(&mut self, metrics: &mut std::fs::File, step: u64, bar: Option<&indicatif::ProgressBar>) -> Result<()> {
        if let Some(v) = self.validator.as_mut() {
            let result = v(&mut self.model)?;
            let line = serde_json::json!({ "step": step, "valid": result });
            writeln!(metrics, "{line}")?;
            let msg = format!("step {step:>6}  valid {result}");
            match bar {
                Some(b) => b.println(msg),
                None => eprintln!("{msg}"),
            }
        }
        Ok(())
    }

    fn progress_bar(&self, cfg: &TrainConfig, at: u64) -> Option<indicatif::ProgressBar> {
        if !cfg.progress || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return None;
        }
        let len = cfg.max_steps.unwrap_or(0);
        let b = indicatif::ProgressBar::new(len);
        let style = if len > 0 {
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}"
        } else {
            "{spinner} [{elapsed_precise}] {pos} steps  {per_sec}  {msg}"
        };
        b.set_style(indicatif::ProgressStyle::with_template(style).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
        b.set_position(at);
        Some(b)
    }
}

/// Prepares the run directory of rank 0 for continuing at `step` and opens its metrics file.
fn open_run_dir(out_dir: &Path, step: u64) -> Result<std::fs::File> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("{}: cannot create the run directory", out_dir.display()))?;
    // Lines a previous attempt logged after the step we start from would be logged again.
    super::run_dir::truncate_metrics(out_dir, step)?;
    let abandoned = checkpoint::remove_after(out_dir, step)?;
    if !abandoned.is_empty() {
        eprintln!("removed {} (past step {step}, which this run continues from)", abandoned.join(", "));
    }
    let metrics_path = out_dir.join(super::run_dir::METRICS_FILE);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("{}: cannot open for appending", metrics_path.display()))
}

impl BatchSource for crate::data::batch::ExampleBatches {
    fn next_batch(&mut self) -> Result<Vec<Example>> {
        Ok(crate::data::batch::ExampleBatches::next_batch(self))
    }
    fn state(&self) -> serde_json::Value {
        serde_json::to_value(crate::data::batch::ExampleBatches::state(self)).unwrap_or_default()
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let s = serde_json::from_value(state.clone()).map_err(|e| anyhow::anyhow!("checkpoint data position is not valid: {e}"))?;
        crate::data::batch::ExampleBatches::restore(self, s)
    }
}

impl BatchSource for crate::data::mixture::Mixture {
    fn next_batch(&mut self) -> Result<Vec<Example>> {
        Ok(crate::data::mixture::Mixture::next_batch(self))
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "mixture": crate::data::mixture::Mixture::state(self) })
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let s = serde_json::from_value(state["mixture"].clone())
            .map_err(|e| anyhow::anyhow!("checkpoint data position is not a ratio mixture's (was the run started without ratios?): {e}"))?;
        crate::data::mixture::Mixture::restore(self, s)
    }
    fn examples_per_file(&self) -> Option<Vec<u64>> {
        Some(self.used())
    }
}
