//! The sampler's kernels: the pick over the vocabulary and the re-masking step. Kernels:
//! sampler.cu. CPU twin: cpu/sampler.rs.

use super::buffer::{CudaBuf, CudaIBuf, InPlace};
use super::{cfg_rows, to_i32, CudaBackend};
use crate::backend::contract::{check_canvases, CanvasMeta, StepParams};
use crate::backend::{CanvasInputs, CanvasState, Picks, PicksMut, VocabShape};
use crate::backend::{ConfidenceKind, ReparamRule};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use std::sync::{Arc, MutexGuard};

/// Threads per row for the vocabulary kernels (a 250k-column row is ~250 columns a thread).
pub(super) const VOCAB_THREADS: u32 = 1024;
/// Forbidden ids live in the sampler's shared memory.
const MAX_FORBID: usize = 8192;
/// A canvas's ranked scores live in the re-masking kernel's shared memory.
const MAX_SLOTS: usize = 8192;

/// Small device buffers reused across calls, so the sampling loop does not allocate.
pub struct Scratch {
    pub(super) stream: Arc<CudaStream>,
    pub floats: CudaSlice<f32>,
    pub floats2: CudaSlice<f32>,
    pub f64_acc: CudaSlice<f64>,
}

pub(super) fn grow<T: DeviceRepr + ValidAsZeroBits>(stream: &Arc<CudaStream>, s: &mut CudaSlice<T>, n: usize) -> Result<()> {
    if s.len() < n {
        *s = stream.alloc_zeros::<T>(n.next_power_of_two())?;
    }
    Ok(())
}

impl Scratch {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        Ok(Scratch {
            stream: stream.clone(),
            floats: stream.alloc_zeros(256)?,
            floats2: stream.alloc_zeros(256)?,
            f64_acc: stream.alloc_zeros(1)?,
        })
    }
}

impl CudaBackend {
    pub(crate) fn scratch(&self) -> Result<MutexGuard<'_, Scratch>> {
        self.scratch.lock().map_err(|_| anyhow!("CUDA scratch buffers poisoned by an earlier panic"))
    }

    /// Per row: the argmax (or Gumbel-max sample at `temperature`) over the allowed columns and its
    /// log-softmax at temperature 1, into `token` and `logprob`. Launch only (graph-capturable):
    /// every argument is checked on the host, from the integer buffers' host copies.
    pub(crate) fn vocab_pick(
        &self,
        logits: &CudaBuf,
        shape: VocabShape,
        forbid: &CudaIBuf,
        temperature: f32,
        gumbel: Option<(&CudaIBuf, &CudaIBuf)>,
        out: PicksMut<'_, CudaBuf, CudaIBuf>,
    ) -> Result<()> {
        let VocabShape { rows, vocab, valid } = shape;
        let PicksMut { token, logprob } = out;
        if rows == 0 {
            return Ok(());
        }
        if valid > vocab || vocab == 0 {
            bail!("vocab_pick: valid_vocab {valid} must be in 1..={vocab}");
        }
        if forbid.len() > MAX_FORBID {
            bail!("vocab_pick: {} forbidden ids is more than the CUDA kernel's {MAX_FORBID}", forbid.len());
        }
        Self::check_len("vocab_pick logits", logits.len, rows * vocab)?;
        Self::check_len("vocab_pick token", token.len(), rows)?;
        Self::check_len("vocab_pick logprob", logprob.len, rows)?;
        if let Some((seeds, streams)) = gumbel {
            Self::check_len("vocab_pick Gumbel seeds (two per row)", seeds.len(), 2 * rows)?;
            Self::check_len("vocab_pick Gumbel streams", streams.len(), rows)?;
        }
        let (nr, nv, nvalid, nf) = (to_i32("rows", rows)?, to_i32("vocab", vocab)?, to_i32("valid_vocab", valid)?, forbid.len() as i32);
        let use_gumbel = gumbel.is_some() as i32;
        // Without noise the kernel never reads them; any live device pointer will do.
        let (seeds, streams) = gumbel.unwrap_or((forbid, forbid));
        let xs = self.as_bf16(logits)?;
        let lp = self.out_f32(logprob)?;
        let cfg = cfg_rows(rows, VOCAB_THREADS, (forbid.len() * 4) as u32)?;
        launch!(
            self,
            "vocab_pick_bf16",
            cfg,
            [xs.get(), &nr, &nv, &nvalid, &forbid.dev, &nf, &temperature, &use_gumbel, &seeds.dev, &streams.dev, &mut token.dev, lp]
        )
    }

    /// Per row, the margin or negative entropy of softmax(logits) over the allowed columns (see
    /// `Backend::vocab_confidence`). Launch only.
    pub(crate) fn vocab_confidence(
        &self,
        logits: &CudaBuf,
        shape: VocabShape,
        forbid: &CudaIBuf,
        kind: ConfidenceKind,
        out: &mut CudaBuf,
    ) -> Result<()> {
        let VocabShape { rows, vocab, valid } = shape;
        if rows == 0 {
            return Ok(());
        }
        if valid > vocab || vocab == 0 {
            bail!("vocab_confidence: valid_vocab {valid} must be in 1..={vocab}");
        }
        if forbid.len() > MAX_FORBID {
            bail!("vocab_confidence: {} forbidden ids is more than the CUDA kernel's {MAX_FORBID}", forbid.len());
        }
        Self::check_len("vocab_confidence logits", logits.len, rows * vocab)?;
        Self::check_len("vocab_confidence output", out.len, rows)?;
        let (nr, nv, nvalid, nf) = (to_i32("rows", rows)?, to_i32("vocab", vocab)?, to_i32("valid_vocab", valid)?, forbid.len() as i32);
        let kind = kind as i32;
        let xs = self.as_bf16(logits)?;
        let o = self.out_f32(out)?;
        let cfg = cfg_rows(rows, VOCAB_THREADS, (forbid.len() * 4) as u32)?;
        launch!(self, "vocab_confidence_bf16", cfg, [xs.get(), &nr, &nv, &nvalid, &forbid.dev, &nf, &kind, o])
    }

    /// Classifier-free guidance on `2·shape.rows` rows of logits, in place (see
    /// `Backend::cfg_combine`). Launch only.
    pub(crate) fn cfg_combine(&self, logits: &mut CudaBuf, shape: VocabShape, scale: f32) -> Result<()> {
        let VocabShape { rows, vocab, .. } = shape;
        if rows == 0 {
            return Ok(());
        }
        Self::check_len("cfg_combine logits", logits.len, 2 * rows * vocab)?;
        let (nr, nv) = (to_i32("rows", rows)?, to_i32("vocab", vocab)?);
        to_i32("cfg_combine elements", 2 * rows * vocab)?;
        let n = logits.len;
        let cfg = super::cfg_1d(rows * vocab);
        let mut target = Self::in_place(logits);
        match &mut target {
            InPlace::Bf16(d) => launch!(self, "cfg_combine_bf16", cfg, [&mut **d, &nr, &nv, &scale])?,
            InPlace::F32(d, _) => launch!(self, "cfg_combine_f32", cfg, [&mut **d, &nr, &nv, &scale])?,
        }
        self.finish_in_place(target, n)
    }

    /// One reparameterized step on every canvas (see `Backend::reparam_step`). Launch only; the
    /// canvas layout is checked against the host copy of `canvases`.
    pub(crate) fn reparam_step(
        &self,
        canvases: CanvasInputs<'_, CudaIBuf>,
        picks: Picks<'_, CudaBuf, CudaIBuf>,
        state: CanvasState<'_, CudaBuf, CudaIBuf>,
        ids: &mut CudaIBuf,
        rule: ReparamRule,
    ) -> Result<()> {
        let CanvasInputs { meta: canvases, n: n_canvases, step } = canvases;
        let Picks { token: pick_token, logprob: pick_logprob, rank } = picks;
        let CanvasState { tokens, scores, masked, left } = state;
        Self::check_len("reparam_step canvases", canvases.len(), CanvasMeta::FIELDS * n_canvases)?;
        Self::check_len("reparam_step step", step.len(), StepParams::FIELDS * n_canvases)?;
        Self::check_len("reparam_step left counts", left.len(), n_canvases)?;
        let slots = tokens.len();
        let widest = check_canvases(&canvases.host, &step.host, n_canvases, slots, ids.len())?;
        if widest > MAX_SLOTS {
            bail!("reparam_step: a canvas of {widest} slots is more than the kernel's {MAX_SLOTS}");
        }
        for (what, have) in [
            ("scores", scores.len),
            ("masked", masked.len()),
            ("pick tokens", pick_token.len()),
            ("pick log-probs", pick_logprob.len),
            ("ranked values", rank.len),
        ] {
            Self::check_len(&format!("reparam_step {what}"), have, slots)?;
        }
        if n_canvases == 0 {
            return Ok(());
        }
        let lp = self.as_f32(pick_logprob)?;
        let rk = self.as_f32(rank)?;
        let sc = self.acc_f32(scores)?;
        let (cond, noise) = (rule.cond as i32, rule.noise as i32);
        let cfg = cfg_rows(n_canvases, 256, (widest * 4) as u32)?;
        launch!(
            self,
            "reparam_step",
            cfg,
            [
                &canvases.dev,
                &step.dev,
                &pick_token.dev,
                lp.get(),
                rk.get(),
                &mut tokens.dev,
                sc,
                &mut masked.dev,
                &mut ids.dev,
                &mut left.dev,
                &cond,
                &noise,
                &rule.seed,
                &rule.mask
            ]
        )
    }
}
