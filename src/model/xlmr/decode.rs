//! A device-resident decode: the canvases of one batch stay on the device and every step runs
//! the forward, the pick and the re-masking (`Backend::reparam_step`) there, writing the next
//! step's token ids in place. The host only queues steps (no read-back, no wait) and reads the
//! slots once at the end. The step is the sampling step of pick.rs plus the re-masking, recorded
//! and replayed the same way.

use super::pick::StepKey;
use super::XlmR;
use crate::backend::contract::{check_canvases, packed, CanvasMeta, StepParams};
use crate::backend::{pack_gumbel, Backend, ConfidenceKind, ReparamRule};
use crate::model::Batch;
use anyhow::{ensure, Context, Result};

/// How one batch is decoded (fixed for all its steps).
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeSpec {
    /// Ids never picked (the sampler's `<mask>`).
    pub forbid: Vec<i32>,
    pub temperature: f32,
    /// Gumbel-max sampling (each canvas's own seed per step) rather than the argmax.
    pub sampling: bool,
    pub rule: ReparamRule,
    /// What the steps rank besides the pick's log-prob.
    pub confidence: Option<ConfidenceKind>,
}

/// One canvas's inputs for one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CanvasStep {
    /// The step's window, mode, k, ranking noise and threshold (`Backend::reparam_step`).
    pub params: StepParams,
    /// The Gumbel-max seed of the pick (row j of the canvas draws stream (seed, j)); unused
    /// without sampling.
    pub sample_seed: u64,
}

/// One canvas's slots after the last step: tokens, the log-prob each had when committed, masked.
pub type CanvasSlots = (Vec<i32>, Vec<f32>, Vec<bool>);

impl<B: Backend> XlmR<B> {
    /// Starts a device-resident decode of `batch`, whose row b holds canvas b with its slots,
    /// all `<mask>`, at positions `first[b] .. first[b] + lens[b]` of the row.
    pub fn decode_start(&mut self, batch: &Batch, first: &[usize], lens: &[usize], spec: &DecodeSpec) -> Result<()> {
        ensure!(first.len() == batch.batch && lens.len() == batch.batch, "decode: {} canvases for a batch of {}", first.len(), batch.batch);
        ensure!(first.iter().zip(lens).all(|(f, l)| f + l <= batch.seq), "decode: a canvas's slots run past its row of {}", batch.seq);
        self.p.check_batch(batch)?;
        let key = StepKey {
            batch: batch.batch,
            seq: batch.seq,
            group_rows: lens.to_vec(),
            forbid: spec.forbid.clone(),
            temperature: spec.temperature.to_bits(),
            sampling: spec.sampling,
            confidence: spec.confidence,
            cfg: None,
            decode: Some(spec.rule),
        };
        self.step_plan_for(key)?;
        let plan = self.work.step.as_mut().context("decode plan")?;
        {
            let be = &self.p.backend;
            self.p.set_encoder_inputs(&mut plan.enc, batch)?;
            let mut rows = Vec::new();
            let mut meta = Vec::with_capacity(lens.len());
            for (b, (&f, &n)) in first.iter().zip(lens).enumerate() {
                let pos0 = b * batch.seq + f;
                meta.push(CanvasMeta { first: rows.len() as i32, len: n as i32, pos0: pos0 as i32 });
                rows.extend((pos0..pos0 + n).map(|p| p as i32));
            }
            be.write_i32(&mut plan.head.idx, &rows)?;
            if spec.sampling {
                let streams: Vec<(u64, u32)> = lens.iter().flat_map(|&n| (0..n as u32).map(|j| (0, j))).collect();
                be.write_i32(&mut plan.streams, &pack_gumbel(&streams).1)?;
            }
            let c = plan.canvases.as_mut().context("decode plan without canvases")?;
            be.write_i32(&mut c.meta, packed(&meta))?;
            c.meta_host = meta;
            be.write_i32(&mut c.tokens, &vec![spec.rule.mask; rows.len()])?;
            be.write_f32(&mut c.scores, &vec![f32::NEG_INFINITY; rows.len()])?;
            be.write_i32(&mut c.masked, &vec![1; rows.len()])
        }
    }

    /// Queues one step with each canvas's inputs; waits for nothing.
    pub fn decode_step(&mut self, steps: &[CanvasStep]) -> Result<()> {
        let _range = nvtx::range!("decode step");
        let plan = self.work.step.as_mut().context("decode_step before decode_start")?;
        {
            let be = &self.p.backend;
            let c = plan.canvases.as_mut().context("decode_step before decode_start")?;
            ensure!(steps.len() == c.n, "decode: inputs for {} canvases, the batch has {}", steps.len(), c.n);
            let per: Vec<StepParams> = steps.iter().map(|s| s.params).collect();
            check_canvases(packed(&c.meta_host), packed(&per), c.n, plan.key.pick_rows(), plan.key.batch * plan.key.seq)?;
            be.write_i32(&mut c.step, packed(&per))?;
            if plan.key.sampling {
                let seeds: Vec<(u64, u32)> =
                    steps.iter().zip(&plan.key.group_rows).flat_map(|(s, &n)| std::iter::repeat_n((s.sample_seed, 0), n)).collect();
                be.write_i32(&mut plan.seeds, &pack_gumbel(&seeds).0)?;
            }
            self.p.execute(plan)
        }
    }

    /// Per canvas, the masked slots left in its window after the steps queued so far (waits for them).
    pub fn decode_left(&mut self) -> Result<Vec<usize>> {
        let plan = self.work.step.as_ref().context("decode_left before decode_start")?;
        let c = plan.canvases.as_ref().context("decode_left before decode_start")?;
        Ok(self.p.backend.read_i32(&c.left)?.iter().map(|&v| v.max(0) as usize).collect())
    }

    /// Every canvas's slots after the steps queued so far.
    pub fn decode_finish(&mut self) -> Result<Vec<CanvasSlots>> {
        let plan = self.work.step.as_ref().context("decode_finish before decode_start")?;
        let c = plan.canvases.as_ref().context("decode_finish before decode_start")?;
        let be = &self.p.backend;
        let (tokens, scores, masked) = (be.read_i32(&c.tokens)?, be.download(&c.scores)?, be.read_i32(&c.masked)?);
        let mut out = Vec::with_capacity(c.n);
        let mut at = 0;
        for &n in &plan.key.group_rows {
            out.push((tokens[at..at + n].to_vec(), scores[at..at + n].to_vec(), masked[at..at + n].iter().map(|&m| m != 0).collect()));
            at += n;
        }
        Ok(out)
    }
}
