//! The RDM sampler (docs/method.md §4): canvases `[<s>] prompt <mask>×L </s>`, K denoising steps with a
//! model behind the `Denoiser` trait, and finalisation into tokens and a mean log-prob score.
//!
//! Batching never changes a result: every random number is drawn from a Philox stream keyed by the
//! example's index in the `prompts` slice and the step, never by its row in a batch, and with
//! sampling each example gets its own pick call (its own Gumbel seed). The streams, all under
//! `SamplerConfig::seed` (key) with slot index `j` (0-based among the example's target slots) as
//! the counter unless said otherwise:
//! - stream `1<<56 | example<<24 | step`: `stochastic<c>` ranking noise, `philox_gumbel` (f32
//!   `−ln(−ln u)`, u in (0,1) with 24 bits), scaled by `f32(c·rate)` and added to the f32 score;
//! - stream `2<<56 | example<<24 | step`: `cmlm`'s unmasking draws, `philox_uniform`, compared
//!   with `f32(1/(K−(s−1)))`;
//! - stream `3<<56 | example<<24 | step`: the example's sampling seed for that step, the u32
//!   values at counters 0 (high half) and 1 (low half); `PickOpts::sample_seed` then draws the
//!   Gumbel-max noise per (row within the pick call = rank of the slot among the scored slots,
//!   vocabulary id).
//!
//! Scores (docs/method.md §4.4): the hypothesis score is the mean of each kept slot's log-prob at the
//! moment it was last committed. This includes `cmlm` and `ar`, where the official code instead
//! reports the mean of the LAST step's max log-probs; dlm-engine keeps one definition for all.

use super::strategy::{Remask, Schedule, Strategy};
use crate::backend::{ReparamRule, RowStats};
use crate::model::{Batch, CanvasSlots, CanvasStep, DecodeSpec, PickOpts};
use crate::rdm::remask::{self, RankNoise, Slots};
use crate::rng::{philox_u32, philox_uniform};
use anyhow::{bail, ensure, Result};

/// A model that, for each flat position `b·seq + t` in `rows`, picks a token (argmax, or a sample
/// when `opts.sample_seed` is set) with `opts.forbid` excluded, and returns it with its
/// log-softmax at temperature 1 (as `backend::cpu::sampler::vocab_pick`).
pub trait Denoiser {
    fn pick(&mut self, batch: &Batch, rows: &[i32], opts: &PickOpts) -> Result<RowStats>;

    /// Called before the picks of step `step` (1-based) of each batch. The RDM model is
    /// time-agnostic (docs/method.md §1.1) and ignores it; test doubles and progress meters use it.
    fn begin_step(&mut self, _step: usize) {}

    /// Several picks over the same batch, each group with its own options (sampling gives every
    /// example its own seed). The default runs `pick` once per group, i.e. one forward pass per
    /// group; a model should override it to run the forward once and pick per group.
    fn pick_groups(&mut self, batch: &Batch, groups: &[PickGroup]) -> Result<Vec<RowStats>> {
        groups.iter().map(|g| self.pick(batch, &g.rows, &g.opts)).collect()
    }

    /// A denoiser that can keep a batch's canvases on its device and run whole reparameterized
    /// steps there returns itself here; `generate` then queues the steps without waiting for
    /// them and reads the slots back once (see `decode_on_device`).
    fn device_steps(&mut self) -> Option<&mut dyn DeviceSteps> {
        None
    }
}

/// Whole reparameterized steps on the device (the model's `decode_*`): the sampler computes
/// every step's inputs (k, ranking-noise streams, sampling seeds), the device does the rest.
pub trait DeviceSteps {
    fn start(&mut self, batch: &Batch, first: &[usize], lens: &[usize], spec: &DecodeSpec) -> Result<()>;
    fn step(&mut self, steps: &[CanvasStep]) -> Result<()>;
    fn finish(&mut self) -> Result<Vec<CanvasSlots>>;
}

/// Flat positions of one batch to pick at, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct PickGroup {
    pub rows: Vec<i32>,
    pub opts: PickOpts,
}

/// The special token ids the canvas and the finalisation use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: i32,
    pub pad: i32,
    pub eos: i32,
    pub mask: i32,
}

impl SpecialIds {
    /// XLM-R's ids (docs/method.md §2.2).
    pub const XLMR: SpecialIds = SpecialIds { bos: 0, pad: 1, eos: 2, mask: 250_001 };
}

#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// K, the number of denoising steps.
    pub steps: usize,
    pub strategy: Strategy,
    /// Softmax temperature of sampling (unused by argmax).
    pub temperature: f32,
    /// Sample tokens (`true`) or take the argmax (`false`).
    pub sample: bool,
    pub seed: u64,
    /// Keep the target slots after every step in `Generated::steps`.
    pub record_steps: bool,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { steps: 50, strategy: Strategy::default(), temperature: 1.0, sample: false, seed: 0, record_steps: false }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// The final target tokens without the `<s>`, `<pad>` and `</s>` the model put in target slots.
    pub tokens: Vec<i32>,
    /// Mean committed log-prob over the kept slots; −inf when no slot is kept.
    pub score: f32,
    /// The target slots (`<mask>` included) after every step, when `record_steps` is set.
    pub steps: Option<Vec<Vec<i32>>>,
}

/// Per-step callback: the step (1-based) and the full canvases of the current batch (unpadded),
/// called once per step of each batch; batches are consecutive `batch_size` chunks of the input.
pub type StepHook<'a> = &'a mut dyn FnMut(usize, &[Vec<i32>]);

const RANK_NOISE: u64 = 1;
const CMLM_DRAW: u64 = 2;
const SAMPLE_SEED: u64 = 3;
const MAX_STEPS: usize = 1 << 24;
const MAX_EXAMPLES: usize = 1 << 32;

fn stream(purpose: u64, example: usize, step: usize) -> u64 {
    (purpose << 56) | ((example as u64) << 24) | step as u64
}

/// The Gumbel-max seed of `example` at `step` (see the module comment).
pub fn sample_seed(seed: u64, example: usize, step: usize) -> u64 {
    let st = stream(SAMPLE_SEED, example, step);
    ((philox_u32(seed, st, 0) as u64) << 32) | philox_u32(seed, st, 1) as u64
}

/// Decodes every prompt (`[<s>] + prompt ids`, no `</s>`) into `lengths[i]` target tokens,
/// `batch_size` examples per denoiser batch. The result does not depend on `batch_size`.
pub fn generate(
    d: &mut impl Denoiser,
    prompts: &[Vec<i32>],
    lengths: &[usize],
    special: SpecialIds,
    cfg: &SamplerConfig,
    batch_size: usize,
    mut on_step: Option<StepHook<'_>>,
) -> Result<Vec<Generated>> {
    validate(prompts, lengths, special, cfg, batch_size)?;
    let mut out = Vec::with_capacity(prompts.len());
    for start in (0..prompts.len()).step_by(batch_size) {
        let end = (start + batch_size).min(prompts.len());
        let mut canvases: Vec<Canvas> = (start..end)
            .map(|i| Canvas {
                example: i,
                prompt: &prompts[i],
                slots: Slots::all_masked(lengths[i], special.mask),
                history: cfg.record_steps.then(Vec::new),
            })
            .collect();
        // The device path has no per-step view of the canvases, which hooks and histories need.
        let device = match cfg.strategy {
            Strategy::Reparam { .. } if on_step.is_none() && !cfg.record_steps && canvases.iter().any(|c| !c.slots.is_empty()) => {
                d.device_steps()
            }
            _ => None,
        };
        if let Some(dev) = device {
            decode_on_device(dev, &mut canvases, special, cfg)?;
        } else {
            for s in 1..=cfg.steps {
                denoise_step(d, &mut canvases, special, cfg, s)?;
                if let Some(hook) = on_step.as_deref_mut() {
                    let rows: Vec<Vec<i32>> = canvases.iter().map(|c| c.row(special)).collect();
                    hook(s, &rows);
                }
            }
        }
        for c in canvases {
            out.push(finalize(c, special)?);
        }
    }
    Ok(out)
}

/// Index of the best candidate by score (the first on ties), as the length beam selects
/// (docs/method.md §4.4); `None` for an empty slice.
pub fn best_candidate(candidates: &[Generated]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, c) in candidates.iter().enumerate() {
        if best.is_none_or(|b| c.score > candidates[b].score) {
            best = Some(i);
        }
    }
    best
}

fn validate(prompts: &[Vec<i32>], lengths: &[usize], special: SpecialIds, cfg: &SamplerConfig, batch_size: usize) -> Result<()> {
    ensure!(prompts.len() == lengths.len(), "sampler: {} prompts but {} target lengths", prompts.len(), lengths.len());
    ensure!(prompts.len() < MAX_EXAMPLES, "sampler: at most {MAX_EXAMPLES} examples per call, got {}", prompts.len());
    ensure!(batch_size >= 1, "sampler: batch size must be at least 1");
    ensure!((1..MAX_STEPS).contains(&cfg.steps), "sampler: steps must be in 1..{MAX_STEPS}, got {}", cfg.steps);
    if cfg.sample {
        ensure!(cfg.temperature.is_finite() && cfg.temperature > 0.0, "sampler: temperature must be > 0, got {}", cfg.temperature);
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.first() != Some(&special.bos) {
            bail!("sampler: prompt {i} must start with <s> (id {}), got {:?}", special.bos, p.first());
        }
    }
    if cfg.strategy == Strategy::Ar {
        let longest = lengths.iter().copied().max().unwrap_or(0);
        ensure!(
            cfg.steps >= longest,
            "sampler: strategy ar fills one slot per step, so steps ({}) must be at least the longest target length ({longest})",
            cfg.steps
        );
    }
    Ok(())
}

struct Canvas<'a> {
    example: usize,
    prompt: &'a [i32],
    slots: Slots,
    history: Option<Vec<Vec<i32>>>,
}

impl Canvas<'_> {
    fn row(&self, special: SpecialIds) -> Vec<i32> {
        let mut r = Vec::with_capacity(self.prompt.len() + self.slots.len() + 1);
        r.extend_from_slice(self.prompt);
        r.extend_from_slice(&self.slots.tokens);
        r.push(special.eos);
        r
    }
}

/// Which target slots of one canvas are scored at step `s`.
fn slots_to_score(c: &Canvas, cfg: &SamplerConfig, s: usize) -> Vec<usize> {
    match cfg.strategy {
        // The ranking needs the current confidence at every slot, decoded ones included.
        Strategy::Reparam { .. } => (0..c.slots.len()).collect(),
        Strategy::Cmlm => {
            let p = (1.0 / (cfg.steps - (s - 1)) as f64) as f32;
            let st = stream(CMLM_DRAW, c.example, s);
            (0..c.slots.len()).filter(|&j| c.slots.masked[j] && philox_uniform(cfg.seed, st, j as u64) < p).collect()
        }
        Strategy::Ar => remask::first_masked(&c.slots).into_iter().collect(),
    }
}

fn denoise_step(d: &mut impl Denoiser, canvases: &mut [Canvas], special: SpecialIds, cfg: &SamplerConfig, s: usize) -> Result<()> {
    d.begin_step(s);
    let plans: Vec<Vec<usize>> = canvases.iter().map(|c| slots_to_score(c, cfg, s)).collect();
    let rows: Vec<Vec<i32>> = canvases.iter().map(|c| c.row(special)).collect();
    let batch = Batch::from_rows(&rows, special.pad);
    let flat = |b: usize, j: usize| (b * batch.seq + canvases[b].prompt.len() + j) as i32;
    let opts = |sample_seed| PickOpts { forbid: vec![special.mask], temperature: cfg.temperature, sample_seed };

    // One group per example when sampling (its own seed); otherwise one group for the batch.
    // `members[g]` lists the batch rows whose planned slots make up group g, in order.
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut groups: Vec<PickGroup> = Vec::new();
    if cfg.sample {
        for (b, plan) in plans.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
            members.push(vec![b]);
            let rows = plan.iter().map(|&j| flat(b, j)).collect();
            groups.push(PickGroup { rows, opts: opts(Some(sample_seed(cfg.seed, canvases[b].example, s))) });
        }
    } else if plans.iter().any(|p| !p.is_empty()) {
        members.push((0..canvases.len()).collect());
        let rows = plans.iter().enumerate().flat_map(|(b, p)| p.iter().map(move |&j| (b, j))).map(|(b, j)| flat(b, j)).collect();
        groups.push(PickGroup { rows, opts: opts(None) });
    }
    let stats = if groups.is_empty() { Vec::new() } else { d.pick_groups(&batch, &groups)? };
    ensure!(stats.len() == groups.len(), "denoiser returned {} pick groups for {} requested", stats.len(), groups.len());

    for ((group, st), rows_of_group) in groups.iter().zip(&stats).zip(&members) {
        ensure!(
            st.token.len() == group.rows.len() && st.logprob.len() == group.rows.len(),
            "denoiser returned {} tokens and {} log-probs for {} rows",
            st.token.len(),
            st.logprob.len(),
            group.rows.len()
        );
        let mut at = 0;
        for &b in rows_of_group {
            let n = plans[b].len();
            apply(&mut canvases[b], &plans[b], &st.token[at..at + n], &st.logprob[at..at + n], special, cfg, s);
            at += n;
        }
    }
    for c in canvases.iter_mut() {
        if let Some(h) = c.history.as_mut() {
            h.push(c.slots.tokens.clone());
        }
    }
    Ok(())
}

/// All steps of a reparameterized strategy on the device: the same picks and updates as
/// `denoise_step` + `apply` (every slot scored, one pick group per canvas when sampling), with
/// the same random streams.
fn decode_on_device(dev: &mut dyn DeviceSteps, canvases: &mut [Canvas], special: SpecialIds, cfg: &SamplerConfig) -> Result<()> {
    let Strategy::Reparam { remask, noise_scale, schedule } = cfg.strategy else {
        bail!("internal: device decoding is for reparam strategies")
    };
    let rows: Vec<Vec<i32>> = canvases.iter().map(|c| c.row(special)).collect();
    let batch = Batch::from_rows(&rows, special.pad);
    let first: Vec<usize> = canvases.iter().map(|c| c.prompt.len()).collect();
    let lens: Vec<usize> = canvases.iter().map(|c| c.slots.len()).collect();
    let rule = ReparamRule { cond: remask == Remask::Cond, noise: noise_scale.is_some(), seed: cfg.seed, mask: special.mask };
    let spec = DecodeSpec { forbid: vec![special.mask], temperature: cfg.temperature, sampling: cfg.sample, rule };
    dev.start(&batch, &first, &lens, &spec)?;
    for s in 1..=cfg.steps {
        let steps: Vec<CanvasStep> = canvases
            .iter()
            .map(|c| {
                let (k, noise) = topk_inputs(c, noise_scale, schedule, cfg, s);
                CanvasStep {
                    k,
                    rank_stream: noise.map_or(0, |n| n.stream),
                    noise_scale: noise.map_or(0.0, |n| n.scale),
                    sample_seed: sample_seed(cfg.seed, c.example, s),
                }
            })
            .collect();
        dev.step(&steps)?;
    }
    let out = dev.finish()?;
    ensure!(out.len() == canvases.len(), "device decoding returned {} canvases for {}", out.len(), canvases.len());
    for (c, (tokens, scores, masked)) in canvases.iter_mut().zip(out) {
        ensure!(tokens.len() == c.slots.len(), "device decoding returned {} slots for {}", tokens.len(), c.slots.len());
        c.slots = Slots { tokens, scores, masked };
    }
    Ok(())
}

/// A reparameterized strategy's top-k inputs for one canvas at step `s`: how many slots the
/// lowest set may hold, and the `stochastic<c>` ranking noise (scale `f32(c·rate)`).
fn topk_inputs(c: &Canvas, noise_scale: Option<f64>, schedule: Schedule, cfg: &SamplerConfig, s: usize) -> (usize, Option<RankNoise>) {
    let rate = schedule.rate(s, cfg.steps);
    let k = super::strategy::stay_masked(c.slots.len(), rate);
    let noise =
        noise_scale.map(|scale| RankNoise { scale: (scale * rate) as f32, seed: cfg.seed, stream: stream(RANK_NOISE, c.example, s) });
    (k, noise)
}

/// Applies the picks at the planned slots of one canvas.
fn apply(c: &mut Canvas, plan: &[usize], tok: &[i32], score: &[f32], special: SpecialIds, cfg: &SamplerConfig, s: usize) {
    match cfg.strategy {
        Strategy::Reparam { remask, noise_scale, schedule } => {
            let (k, noise) = topk_inputs(c, noise_scale, schedule, cfg, s);
            let lowest = remask::lowest_set(&remask::ranked(score, noise), k);
            remask::reparam_update(&mut c.slots, tok, score, &lowest, remask, special.mask);
        }
        Strategy::Cmlm | Strategy::Ar => remask::fill(&mut c.slots, plan, tok, score),
    }
}

fn finalize(c: Canvas, special: SpecialIds) -> Result<Generated> {
    ensure!(!c.slots.masked.iter().any(|&m| m), "sampler: example {} still has masked slots after the last step", c.example);
    let kept: Vec<usize> = (0..c.slots.len()).filter(|&j| ![special.pad, special.bos, special.eos].contains(&c.slots.tokens[j])).collect();
    let score = if kept.is_empty() {
        f32::NEG_INFINITY
    } else {
        (kept.iter().map(|&j| c.slots.scores[j] as f64).sum::<f64>() / kept.len() as f64) as f32
    };
    Ok(Generated { tokens: kept.iter().map(|&j| c.slots.tokens[j]).collect(), score, steps: c.history })
}

impl<B: crate::backend::Backend> Denoiser for crate::model::XlmR<B> {
    fn pick(&mut self, batch: &Batch, rows: &[i32], opts: &PickOpts) -> Result<RowStats> {
        crate::model::XlmR::pick(self, batch, rows, opts)
    }

    fn pick_groups(&mut self, batch: &Batch, groups: &[PickGroup]) -> Result<Vec<RowStats>> {
        let g: Vec<(&[i32], &PickOpts)> = groups.iter().map(|g| (g.rows.as_slice(), &g.opts)).collect();
        self.pick_many(batch, &g)
    }

    fn device_steps(&mut self) -> Option<&mut dyn DeviceSteps> {
        Some(self)
    }
}

impl<B: crate::backend::Backend> DeviceSteps for crate::model::XlmR<B> {
    fn start(&mut self, batch: &Batch, first: &[usize], lens: &[usize], spec: &DecodeSpec) -> Result<()> {
        self.decode_start(batch, first, lens, spec)
    }
    fn step(&mut self, steps: &[CanvasStep]) -> Result<()> {
        self.decode_step(steps)
    }
    fn finish(&mut self) -> Result<Vec<CanvasSlots>> {
        self.decode_finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(score: f32) -> Generated {
        Generated { tokens: vec![], score, steps: None }
    }

    #[test]
    fn best_candidate_takes_the_highest_score_and_the_first_on_ties() {
        assert_eq!(best_candidate(&[]), None);
        assert_eq!(best_candidate(&[gen(f32::NEG_INFINITY)]), Some(0));
        assert_eq!(best_candidate(&[gen(-2.0), gen(-0.5), gen(-0.5), gen(f32::NEG_INFINITY)]), Some(1));
    }

    #[test]
    fn streams_of_examples_steps_and_purposes_do_not_collide() {
        assert_ne!(stream(RANK_NOISE, 1, 0), stream(RANK_NOISE, 0, 1));
        assert_ne!(stream(RANK_NOISE, 0, 1), stream(CMLM_DRAW, 0, 1));
        assert_eq!(stream(SAMPLE_SEED, MAX_EXAMPLES - 1, MAX_STEPS - 1) >> 56, SAMPLE_SEED);
        assert_ne!(sample_seed(0, 0, 1), sample_seed(0, 1, 1));
    }
}
