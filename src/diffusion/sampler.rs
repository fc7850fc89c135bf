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
//!   vocabulary id);
//! - stream `4<<56 | example<<24 | step`: `--confidence random`'s confidence, `philox_uniform`.
//!
//! A step is counted per example (it takes part in every pass from the first until it is done),
//! so the step of an example's streams never depends on its batch.
//!
//! Beyond the paper (docs/decoding.md): the `threshold` strategy, confidences other than the
//! log-prob, blocks, classifier-free guidance and the prefix cache run in the host loop, on
//! any backend; the paper's strategies keep their device-resident loop.
//!
//! Scores (docs/method.md §4.4): the hypothesis score is the mean of each kept slot's log-prob at the
//! moment it was last committed. This includes `cmlm` and `ar`, where the official code instead
//! reports the mean of the LAST step's max log-probs; dlm-engine keeps one definition for all.

use super::canvas::Canvas;
use super::strategy::{Confidence, Remask, Strategy};
use crate::backend::{ConfidenceKind, ReparamRule, RowStats};
use crate::model::{Batch, CanvasSlots, CanvasStep, DecodeSpec, PickOpts};
use crate::rdm::remask::Slots;
use crate::rng::philox_u32;
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

    /// `pick_groups` with the prefix cache (`SamplerConfig::cache`): row b of `batch` needs only
    /// its positions from `active_from[b]` on recomputed (0: the whole row, which refreshes its
    /// cache); the others may come from the last step that computed them. The default computes
    /// everything, which is exact.
    fn pick_groups_cached(&mut self, batch: &Batch, groups: &[PickGroup], active_from: &[usize]) -> Result<Vec<RowStats>> {
        let _ = active_from;
        self.pick_groups(batch, groups)
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
    /// Per canvas, the masked slots left in its window after the steps so far (waits for them).
    fn left(&mut self) -> Result<Vec<usize>>;
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
    /// What ranks the slots, and what `threshold` compares.
    pub confidence: Confidence,
    /// The `threshold` strategy's threshold τ in (0, 1] (see `Confidence::threshold_cut`).
    pub threshold: f32,
    /// Semi-autoregressive blocks of this many target slots (`None`: the whole target).
    pub block_length: Option<usize>,
    /// Unsupervised classifier-free guidance's scale s (0: none).
    pub cfg_scale: f32,
    /// Reuse the keys and values before the current block across its steps (see
    /// `Denoiser::pick_groups_cached`).
    pub cache: bool,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            steps: 50,
            strategy: Strategy::default(),
            temperature: 1.0,
            sample: false,
            seed: 0,
            record_steps: false,
            confidence: Confidence::Prob,
            threshold: 0.9,
            block_length: None,
            cfg_scale: 0.0,
            cache: false,
        }
    }
}

impl SamplerConfig {
    /// Whether the steps can stay on the device: the reparameterized and threshold strategies,
    /// in blocks or not, ranking the log-prob or a confidence the model computes.
    fn device_resident(&self) -> bool {
        matches!(self.strategy, Strategy::Reparam { .. } | Strategy::Threshold)
            && self.confidence != Confidence::Random
            && self.cfg_scale == 0.0
            && !self.cache
            && !self.record_steps
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
    /// Forward passes the example took part in (the number of function evaluations).
    pub nfe: usize,
}

/// Per-step callback: the step (1-based) and the full canvases of the current batch (unpadded),
/// called once per step of each batch; batches are consecutive `batch_size` chunks of the input.
pub type StepHook<'a> = &'a mut dyn FnMut(usize, &[Vec<i32>]);

pub(super) const RANK_NOISE: u64 = 1;
pub(super) const CMLM_DRAW: u64 = 2;
const SAMPLE_SEED: u64 = 3;
pub(super) const RANDOM_CONFIDENCE: u64 = 4;
const MAX_STEPS: usize = 1 << 24;
const MAX_EXAMPLES: usize = 1 << 32;

pub(super) fn stream(purpose: u64, example: usize, step: usize) -> u64 {
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
        let mut canvases: Vec<Canvas> = (start..end).map(|i| Canvas::new(i, &prompts[i], lengths[i], special, cfg)).collect();
        // The device path has no per-step view of the canvases, which hooks and histories need.
        let device = if cfg.device_resident() && on_step.is_none() && canvases.iter().any(|c| !c.slots.is_empty()) {
            d.device_steps()
        } else {
            None
        };
        if let Some(dev) = device {
            decode_on_device(dev, &mut canvases, special, cfg)?;
        } else {
            let mut s = 0;
            while canvases.iter().any(|c| !c.done()) {
                s += 1;
                ensure!(s < MAX_STEPS, "sampler: no end after {MAX_STEPS} steps");
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
    ensure!(cfg.block_length != Some(0), "sampler: the block length must be at least 1");
    ensure!(
        cfg.threshold.is_finite() && cfg.threshold > 0.0 && cfg.threshold <= 1.0,
        "sampler: the threshold must be in (0, 1], got {}",
        cfg.threshold
    );
    ensure!(
        cfg.cfg_scale.is_finite() && cfg.cfg_scale >= 0.0,
        "sampler: the guidance scale must be finite and >= 0, got {}",
        cfg.cfg_scale
    );
    ensure!(!(cfg.cache && cfg.cfg_scale > 0.0), "sampler: the prefix cache does not combine with classifier-free guidance");
    if matches!(cfg.strategy, Strategy::Cmlm | Strategy::Ar) {
        ensure!(
            cfg.confidence == Confidence::Prob,
            "sampler: --confidence ranks slots for the reparam and threshold strategies; {} does not rank",
            cfg.strategy
        );
    }
    ensure!(
        !(cfg.strategy == Strategy::Ar && cfg.block_length.is_some()),
        "sampler: ar already decodes left to right; blocks do not apply"
    );
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

/// What the model computes beside the pick for `confidence`.
fn model_confidence(c: Confidence) -> Option<ConfidenceKind> {
    match c {
        Confidence::Margin => Some(ConfidenceKind::Margin),
        Confidence::Entropy => Some(ConfidenceKind::Entropy),
        Confidence::Prob | Confidence::Random => None,
    }
}

/// One pass over the batch: every canvas not yet done takes its step `s`.
fn denoise_step(d: &mut impl Denoiser, canvases: &mut [Canvas], special: SpecialIds, cfg: &SamplerConfig, s: usize) -> Result<()> {
    d.begin_step(s);
    let plans: Vec<Vec<usize>> = canvases.iter().map(|c| c.plan(cfg, s)).collect();
    let mut rows: Vec<Vec<i32>> = canvases.iter().map(|c| c.row(special)).collect();
    if cfg.cfg_scale > 0.0 {
        rows.extend(canvases.iter().map(|c| c.unconditional_row(special)).collect::<Vec<_>>());
    }
    let batch = Batch::from_rows(&rows, special.pad);
    let flat = |b: usize, j: usize| (b * batch.seq + canvases[b].prompt.len() + j) as i32;
    let opts = |sample_seed| PickOpts {
        forbid: vec![special.mask],
        temperature: cfg.temperature,
        sample_seed,
        confidence: model_confidence(cfg.confidence),
        cfg_scale: (cfg.cfg_scale > 0.0).then_some(cfg.cfg_scale),
    };

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
    let stats = match (groups.is_empty(), cfg.cache) {
        (true, _) => Vec::new(),
        (false, false) => d.pick_groups(&batch, &groups)?,
        (false, true) => {
            // A finished canvas recomputes nothing; one starting a block recomputes its whole row.
            let active_from: Vec<usize> = canvases
                .iter()
                .map(|c| match (c.done(), c.at_block_start()) {
                    (true, _) => batch.seq,
                    (false, true) => 0,
                    (false, false) => c.prompt.len() + c.block_start(),
                })
                .collect();
            d.pick_groups_cached(&batch, &groups, &active_from)?
        }
    };
    ensure!(stats.len() == groups.len(), "denoiser returned {} pick groups for {} requested", stats.len(), groups.len());

    let wants_confidence = model_confidence(cfg.confidence).is_some();
    for ((group, st), rows_of_group) in groups.iter().zip(&stats).zip(&members) {
        ensure!(
            st.token.len() == group.rows.len()
                && st.logprob.len() == group.rows.len()
                && (!wants_confidence || st.confidence.len() == group.rows.len()),
            "denoiser returned {} tokens, {} log-probs and {} confidences for {} rows",
            st.token.len(),
            st.logprob.len(),
            st.confidence.len(),
            group.rows.len()
        );
        let mut at = 0;
        for &b in rows_of_group {
            let n = plans[b].len();
            if n == 0 {
                continue; // taken below
            }
            let conf = st.confidence.get(at..at + n).unwrap_or_default();
            canvases[b].apply(&plans[b], &st.token[at..at + n], &st.logprob[at..at + n], conf, cfg, s);
            at += n;
        }
    }
    // Canvases that scored nothing this step (a `cmlm` draw of none, an empty target) still took it.
    for (b, c) in canvases.iter_mut().enumerate() {
        if plans[b].is_empty() && !c.done() {
            c.apply(&[], &[], &[], &[], cfg, s);
        }
    }
    Ok(())
}

/// All steps of a reparameterized or threshold strategy on the device: the same picks and
/// updates as `denoise_step` and `Canvas::apply` (every slot of the block scored, one pick group
/// per canvas when sampling), with the same random streams. The top-k strategies queue their
/// steps without waiting; a threshold run reads back the masked count of each canvas's block
/// after every step, to know when a block (and the canvas) is done.
fn decode_on_device(dev: &mut dyn DeviceSteps, canvases: &mut [Canvas], special: SpecialIds, cfg: &SamplerConfig) -> Result<()> {
    let rule = match cfg.strategy {
        Strategy::Reparam { remask, noise_scale, .. } => {
            ReparamRule { cond: remask == Remask::Cond, noise: noise_scale.is_some(), seed: cfg.seed, mask: special.mask }
        }
        Strategy::Threshold => ReparamRule { cond: false, noise: false, seed: cfg.seed, mask: special.mask },
        _ => bail!("internal: device decoding is for the reparam and threshold strategies"),
    };
    let rows: Vec<Vec<i32>> = canvases.iter().map(|c| c.row(special)).collect();
    let batch = Batch::from_rows(&rows, special.pad);
    let first: Vec<usize> = canvases.iter().map(|c| c.prompt.len()).collect();
    let lens: Vec<usize> = canvases.iter().map(|c| c.slots.len()).collect();
    let spec = DecodeSpec {
        forbid: vec![special.mask],
        temperature: cfg.temperature,
        sampling: cfg.sample,
        rule,
        confidence: model_confidence(cfg.confidence),
    };
    dev.start(&batch, &first, &lens, &spec)?;
    let mut s = 0;
    while canvases.iter().any(|c| !c.done()) {
        s += 1;
        ensure!(s < MAX_STEPS, "sampler: no end after {MAX_STEPS} steps");
        let steps: Vec<CanvasStep> = canvases
            .iter()
            .map(|c| CanvasStep { params: c.device_step(cfg, s), sample_seed: sample_seed(cfg.seed, c.example, s) })
            .collect();
        dev.step(&steps)?;
        let left = if cfg.strategy == Strategy::Threshold { dev.left()? } else { vec![1; canvases.len()] };
        ensure!(left.len() == canvases.len(), "device decoding returned {} masked counts for {} canvases", left.len(), canvases.len());
        for (c, &l) in canvases.iter_mut().zip(&left) {
            if !c.done() {
                c.advance(cfg, l > 0);
            }
        }
    }
    let out = dev.finish()?;
    ensure!(out.len() == canvases.len(), "device decoding returned {} canvases for {}", out.len(), canvases.len());
    for (c, (tokens, scores, masked)) in canvases.iter_mut().zip(out) {
        ensure!(tokens.len() == c.slots.len(), "device decoding returned {} slots for {}", tokens.len(), c.slots.len());
        c.slots = Slots { tokens, scores, masked };
    }
    Ok(())
}

fn finalize(c: Canvas, special: SpecialIds) -> Result<Generated> {
    ensure!(!c.slots.masked.iter().any(|&m| m), "sampler: example {} still has masked slots after the last step", c.example);
    let kept: Vec<usize> = (0..c.slots.len()).filter(|&j| ![special.pad, special.bos, special.eos].contains(&c.slots.tokens[j])).collect();
    let score = if kept.is_empty() {
        f32::NEG_INFINITY
    } else {
        (kept.iter().map(|&j| c.slots.scores[j] as f64).sum::<f64>() / kept.len() as f64) as f32
    };
    Ok(Generated { tokens: kept.iter().map(|&j| c.slots.tokens[j]).collect(), score, steps: c.history, nfe: c.nfe })
}

impl<B: crate::backend::Backend> Denoiser for crate::model::XlmR<B> {
    fn pick(&mut self, batch: &Batch, rows: &[i32], opts: &PickOpts) -> Result<RowStats> {
        crate::model::XlmR::pick(self, batch, rows, opts)
    }

    fn pick_groups(&mut self, batch: &Batch, groups: &[PickGroup]) -> Result<Vec<RowStats>> {
        let g: Vec<(&[i32], &PickOpts)> = groups.iter().map(|g| (g.rows.as_slice(), &g.opts)).collect();
        self.pick_many(batch, &g)
    }

    fn pick_groups_cached(&mut self, batch: &Batch, groups: &[PickGroup], active_from: &[usize]) -> Result<Vec<RowStats>> {
        let g: Vec<(&[i32], &PickOpts)> = groups.iter().map(|g| (g.rows.as_slice(), &g.opts)).collect();
        self.pick_many_cached(batch, &g, active_from)
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
    fn left(&mut self) -> Result<Vec<usize>> {
        self.decode_left()
    }
    fn finish(&mut self) -> Result<Vec<CanvasSlots>> {
        self.decode_finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(score: f32) -> Generated {
        Generated { tokens: vec![], score, steps: None, nfe: 0 }
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
        assert_ne!(stream(RANDOM_CONFIDENCE, 0, 1), stream(SAMPLE_SEED, 0, 1));
        assert_eq!(stream(SAMPLE_SEED, MAX_EXAMPLES - 1, MAX_STEPS - 1) >> 56, SAMPLE_SEED);
        assert_ne!(sample_seed(0, 0, 1), sample_seed(0, 1, 1));
    }
}
