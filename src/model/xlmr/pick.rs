//! The sampler's step on the model: the encoder, the LM head on the scored rows and the pick, in
//! a workspace of its own that is allocated once per shape and then only written in place.
//!
//! On a backend that records (CUDA graphs), the step is recorded on its second run of a shape,
//! once the first has settled every buffer's storage, and replayed from then on: a step is then
//! the input copies, one replay and the read-back of one token and one log-prob per row.

use super::{check_rows, Encoder, Head, Params, XlmR};
use crate::backend::contract::{packed, CanvasMeta, StepParams};
use crate::backend::{pack_gumbel, Backend, ConfidenceKind, Dropout, ReparamRule, RowStats};
use crate::backend::{CanvasInputs, CanvasState, Picks, PicksMut, VocabShape};
use crate::model::{Batch, PickOpts};
use anyhow::{Context, Result};

/// What a recording depends on besides the buffers' contents.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct StepKey {
    pub batch: usize,
    pub seq: usize,
    /// Rows of each pick group, in order.
    pub group_rows: Vec<usize>,
    pub forbid: Vec<i32>,
    pub temperature: u32,
    pub sampling: bool,
    /// The confidence computed beside the pick, if any.
    pub confidence: Option<ConfidenceKind>,
    /// Classifier-free guidance's scale (f32 bits): the head then runs on twice the rows.
    pub cfg: Option<u32>,
    /// A device-resident decode (decode.rs): the re-masking step follows the pick.
    pub decode: Option<ReparamRule>,
}

impl StepKey {
    /// Rows picked (the conditional ones with guidance).
    pub fn pick_rows(&self) -> usize {
        self.group_rows.iter().sum()
    }
    /// Rows the head runs on.
    fn head_rows(&self) -> usize {
        self.pick_rows() * if self.cfg.is_some() { 2 } else { 1 }
    }
}

pub(super) struct StepPlan<B: Backend> {
    pub key: StepKey,
    pub enc: Encoder<B>,
    pub head: Head<B>,
    forbid: B::IBuf,
    /// Gumbel noise streams of each row (`pack_gumbel`); empty without sampling.
    pub seeds: B::IBuf,
    pub streams: B::IBuf,
    pub token: B::IBuf,
    pub logprob: B::Buf,
    pub confidence: B::Buf,
    /// The canvases of a device-resident decode.
    pub canvases: Option<Canvases<B>>,
    /// Direct runs so far; recording waits for the first to have settled the buffers.
    runs: usize,
    graph: Option<usize>,
    /// Recording failed once for this shape: run directly from then on.
    unrecordable: bool,
}

/// The canvases of a device-resident decode (decode.rs), which a step plan owns: the slots of
/// every canvas, flat, in canvas order (canvas b's first slot is the sum of the
/// earlier canvases' lengths), and the per-canvas arrays of `Backend::reparam_step`.
pub(super) struct Canvases<B: Backend> {
    pub(super) n: usize,
    pub(super) rule: ReparamRule,
    pub(super) meta: B::IBuf,
    /// The host's copy of `meta`, to check each step's windows against.
    pub(super) meta_host: Vec<CanvasMeta>,
    pub(super) step: B::IBuf,
    pub(super) tokens: B::IBuf,
    pub(super) scores: B::Buf,
    pub(super) masked: B::IBuf,
    /// Per canvas: the masked slots left in its window after the last step.
    pub(super) left: B::IBuf,
}

impl<B: Backend> Canvases<B> {
    pub fn alloc(be: &B, lens: &[usize], n: usize, rule: ReparamRule) -> Result<Self> {
        let slots: usize = lens.iter().sum();
        Ok(Canvases {
            n,
            rule,
            meta: be.upload_i32(packed(&vec![CanvasMeta::default(); n]))?,
            meta_host: vec![CanvasMeta::default(); n],
            step: be.upload_i32(packed(&vec![StepParams::default(); n]))?,
            tokens: be.upload_i32(&vec![0; slots])?,
            scores: be.upload_f32(&vec![f32::NEG_INFINITY; slots])?,
            masked: be.upload_i32(&vec![1; slots])?,
            left: be.upload_i32(&vec![0; n])?,
        })
    }

    /// The step's update after the pick, ranking `rank`, which writes the canvases' tokens into `ids`.
    pub fn remask(&mut self, be: &B, picks: Picks<'_, B::Buf, B::IBuf>, ids: &mut B::IBuf) -> Result<()> {
        be.reparam_step(
            CanvasInputs { meta: &self.meta, n: self.n, step: &self.step },
            picks,
            CanvasState { tokens: &mut self.tokens, scores: &mut self.scores, masked: &mut self.masked, left: &mut self.left },
            ids,
            self.rule,
        )
    }
}

/// Options the groups of one head pass must share (the sampler's groups differ in their seed).
fn same_pass(a: &PickOpts, b: &PickOpts) -> bool {
    a.forbid == b.forbid
        && a.temperature.to_bits() == b.temperature.to_bits()
        && a.sample_seed.is_some() == b.sample_seed.is_some()
        && a.confidence == b.confidence
        && a.cfg_scale.map(f32::to_bits) == b.cfg_scale.map(f32::to_bits)
}

impl<B: Backend> XlmR<B> {
    /// The sampler's pick (token and its log-prob) at the flat positions `rows`.
    pub fn pick(&mut self, batch: &Batch, rows: &[i32], opts: &PickOpts) -> Result<RowStats> {
        Ok(self.pick_many(batch, &[(rows, opts)])?.remove(0))
    }

    /// Several picks over one batch with one encoder pass and one head pass: each group of rows
    /// with its own options (sampling gives every example its own seed). Row `i` of a sampling
    /// group draws its Gumbel noise from stream (group seed, i).
    pub fn pick_many(&mut self, batch: &Batch, groups: &[(&[i32], &PickOpts)]) -> Result<Vec<RowStats>> {
        if groups.windows(2).any(|w| !same_pass(w[0].1, w[1].1)) {
            return groups.iter().map(|g| self.pick(batch, g.0, g.1)).collect();
        }
        self.p.check_batch(batch)?;
        let half = if groups.first().is_some_and(|g| g.1.cfg_scale.is_some()) {
            anyhow::ensure!(batch.batch.is_multiple_of(2), "classifier-free guidance needs each canvas twice, got {} rows", batch.batch);
            batch.tokens() / 2
        } else {
            batch.tokens()
        };
        for (rows, _) in groups {
            check_rows(rows, half)?;
        }
        let Some(key) = self.pick_key(batch, groups)? else { return Ok(vec![RowStats::default(); groups.len()]) };
        self.step_plan_for(key)?;
        let plan = self.work.step.as_mut().context("no step plan after planning one")?;
        self.p.run_step(plan, batch, groups)
    }

    /// The step key of a pick over `batch` (groups that share one pass); `None` when nothing
    /// is picked.
    pub(super) fn pick_key(&self, batch: &Batch, groups: &[(&[i32], &PickOpts)]) -> Result<Option<StepKey>> {
        let Some(&(_, opts)) = groups.first() else { return Ok(None) };
        anyhow::ensure!(groups.iter().all(|g| same_pass(g.1, opts)), "pick groups of one pass must share their options but the seed");
        let key = StepKey {
            batch: batch.batch,
            seq: batch.seq,
            group_rows: groups.iter().map(|g| g.0.len()).collect(),
            forbid: opts.forbid.clone(),
            temperature: opts.temperature.to_bits(),
            sampling: opts.sample_seed.is_some(),
            confidence: opts.confidence,
            cfg: opts.cfg_scale.map(f32::to_bits),
            decode: None,
        };
        Ok((key.pick_rows() > 0).then_some(key))
    }

    /// Drops the sampling step's recording: it holds the parameters' device addresses, which a
    /// caller with mutable access may change (a new buffer, a first optimizer step turning a
    /// weight into an f32 master). The next step runs directly once, then records again.
    pub(super) fn forget_recording(&mut self) -> Result<()> {
        if let Some(p) = self.work.step.as_mut() {
            p.runs = 0;
            if let Some(g) = p.graph.take() {
                self.p.backend.release(g)?;
            }
        }
        Ok(())
    }

    /// Whether the last shape's sampling step is replayed from a recording (a CUDA graph).
    pub fn sampling_step_recorded(&self) -> bool {
        self.work.step.as_ref().is_some_and(|p| p.graph.is_some())
    }

    /// Makes `self.work.step` a plan for `key`, keeping the current one (and its recording) when it
    /// already is.
    pub(super) fn step_plan_for(&mut self, key: StepKey) -> Result<()> {
        if self.work.step.as_ref().is_some_and(|p| p.key == key) {
            return Ok(());
        }
        if let Some(old) = self.work.step.take() {
            if let Some(g) = old.graph {
                self.p.backend.release(g)?;
            }
        }
        // The training/logits workspace is rebuilt on demand; free it while sampling.
        self.work.enc = None;
        let be = &self.p.backend;
        let rows = key.pick_rows();
        let noise_rows = if key.sampling { rows } else { 0 };
        let batch = Batch { ids: Vec::new(), batch: key.batch, seq: key.seq };
        self.work.step = Some(StepPlan {
            // A step has no backward pass: one layer's activations, reused by every layer.
            enc: self.p.alloc_encoder(&batch, false)?,
            head: self.p.alloc_head(key.head_rows())?,
            forbid: be.upload_i32(&key.forbid)?,
            seeds: be.upload_i32(&vec![0; 2 * noise_rows])?,
            streams: be.upload_i32(&vec![0; noise_rows])?,
            token: be.upload_i32(&vec![0; rows])?,
            logprob: be.zeros(rows)?,
            confidence: be.zeros(if key.confidence.is_some() { rows } else { 0 })?,
            canvases: key.decode.map(|rule| Canvases::alloc(be, &key.group_rows, key.batch, rule)).transpose()?,
            runs: 0,
            graph: None,
            unrecordable: false,
            key,
        });
        Ok(())
    }
}

impl<B: Backend> Params<B> {
    fn run_step(&self, plan: &mut StepPlan<B>, batch: &Batch, groups: &[(&[i32], &PickOpts)]) -> Result<Vec<RowStats>> {
        let _range = nvtx::range!("sampling step");
        self.set_encoder_inputs(&mut plan.enc, batch)?;
        let rows: Vec<i32> = groups.iter().flat_map(|g| g.0.iter().copied()).collect();
        self.write_pick_inputs(plan, &rows, groups)?;
        self.execute(plan)?;
        self.read_picks(plan, groups)
    }

    /// Writes the head's rows (`rows`, then with guidance the same slots of the unconditional
    /// half of the batch) and the sampling noise of each row.
    pub(super) fn write_pick_inputs(&self, plan: &mut StepPlan<B>, rows: &[i32], groups: &[(&[i32], &PickOpts)]) -> Result<()> {
        let be = &self.backend;
        let mut head_rows = rows.to_vec();
        if plan.key.cfg.is_some() {
            let half = (plan.key.batch / 2 * plan.key.seq) as i32;
            head_rows.extend(rows.iter().map(|r| r + half));
        }
        be.write_i32(&mut plan.head.idx, &head_rows)?;
        if plan.key.sampling {
            let noise: Vec<(u64, u32)> =
                groups.iter().flat_map(|(rows, o)| (0..rows.len()).map(move |i| (o.sample_seed.unwrap_or(0), i as u32))).collect();
            let (seeds, streams) = pack_gumbel(&noise);
            be.write_i32(&mut plan.seeds, &seeds)?;
            be.write_i32(&mut plan.streams, &streams)?;
        }
        Ok(())
    }

    /// The picks of the last step, split by group.
    pub(super) fn read_picks(&self, plan: &StepPlan<B>, groups: &[(&[i32], &PickOpts)]) -> Result<Vec<RowStats>> {
        let be = &self.backend;
        let token = be.read_i32(&plan.token)?;
        let logprob = be.download(&plan.logprob)?;
        let confidence = if plan.key.confidence.is_some() { be.download(&plan.confidence)? } else { Vec::new() };
        let mut out = Vec::with_capacity(groups.len());
        let mut at = 0;
        for (rows, _) in groups {
            let n = rows.len();
            out.push(RowStats {
                token: token[at..at + n].to_vec(),
                logprob: logprob[at..at + n].to_vec(),
                confidence: confidence.get(at..at + n).map(<[f32]>::to_vec).unwrap_or_default(),
            });
            at += n;
        }
        Ok(out)
    }

    /// Runs the plan's ops on the inputs its buffers hold: replays the recording, or records it
    /// (from the second run on), or runs the ops one by one.
    pub(super) fn execute(&self, plan: &mut StepPlan<B>) -> Result<()> {
        let be = &self.backend;
        match plan.graph {
            Some(g) => be.replay(g)?,
            None if plan.runs > 0 && !plan.unrecordable && be.begin_capture()? => match self.record_step(plan) {
                Ok(g) => {
                    plan.graph = Some(g);
                    be.replay(g)?;
                }
                Err(e) => {
                    eprintln!("warning: recording the sampling step failed, running it op by op: {e:#}");
                    plan.unrecordable = true;
                    self.step_ops(plan)?;
                }
            },
            None => {
                self.step_ops(plan)?;
                plan.runs += 1;
            }
        }
        Ok(())
    }

    /// Runs the step's ops inside a capture begun by the caller and ends it, also on failure.
    fn record_step(&self, plan: &mut StepPlan<B>) -> Result<usize> {
        let be = &self.backend;
        match self.step_ops(plan) {
            Ok(()) => be.end_capture(),
            Err(e) => {
                if let Ok(g) = be.end_capture() {
                    be.release(g)?;
                }
                Err(e)
            }
        }
    }

    /// Every device op of a step, launches only.
    fn step_ops(&self, plan: &mut StepPlan<B>) -> Result<()> {
        self.run_encoder(&mut plan.enc, Dropout::off())?;
        self.run_head(&plan.enc, &mut plan.head)?;
        self.pick_ops(plan)
    }

    /// The ops of a step after the head: guidance, the pick, the confidence and, in a
    /// device-resident decode, the re-masking.
    pub(super) fn pick_ops(&self, plan: &mut StepPlan<B>) -> Result<()> {
        let be = &self.backend;
        let gumbel = plan.key.sampling.then_some((&plan.seeds, &plan.streams));
        let shape = VocabShape { rows: plan.key.pick_rows(), vocab: self.head_vocab(), valid: self.valid_vocab() };
        if let Some(scale) = plan.key.cfg {
            be.cfg_combine(&mut plan.head.logits, shape, f32::from_bits(scale))?;
        }
        be.vocab_pick(
            &plan.head.logits,
            shape,
            &plan.forbid,
            f32::from_bits(plan.key.temperature),
            gumbel,
            PicksMut { token: &mut plan.token, logprob: &mut plan.logprob },
        )?;
        if let Some(kind) = plan.key.confidence {
            be.vocab_confidence(&plan.head.logits, shape, &plan.forbid, kind, &mut plan.confidence)?;
        }
        // The device-resident decode ranks the confidence when there is one, else the log-prob.
        let rank = if plan.key.confidence.is_some() { &plan.confidence } else { &plan.logprob };
        match plan.canvases.as_mut() {
            Some(c) => c.remask(be, Picks { token: &plan.token, logprob: &plan.logprob, rank }, &mut plan.enc.ids),
            None => Ok(()),
        }
    }
}
