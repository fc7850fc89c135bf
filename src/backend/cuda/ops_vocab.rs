//! Passes over the vocabulary: the sampler's pick and the fused cross-entropy.
//! Kernels: sampler.cu, vocab.cu. CPU twin: cpu/vocab.rs.

use super::buffer::{CudaBuf, CudaIBuf};
use super::{cfg_rows, to_i32, CudaBackend};
use crate::backend::RowStats;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use std::sync::{Arc, MutexGuard};

/// Threads per row for the vocabulary kernels (a 250k-column row is ~250 columns a thread).
const VOCAB_THREADS: u32 = 1024;
/// Forbidden ids live in the sampler's shared memory.
const MAX_FORBID: usize = 8192;

/// Small device buffers reused across calls, so the sampling loop does not allocate.
pub struct Scratch {
    stream: Arc<CudaStream>,
    pub ints: CudaSlice<i32>,
    pub ints2: CudaSlice<i32>,
    pub floats: CudaSlice<f32>,
    pub floats2: CudaSlice<f32>,
    pub f64_acc: CudaSlice<f64>,
}

fn grow<T: DeviceRepr + ValidAsZeroBits>(stream: &Arc<CudaStream>, s: &mut CudaSlice<T>, n: usize) -> Result<()> {
    if s.len() < n {
        *s = stream.alloc_zeros::<T>(n.next_power_of_two())?;
    }
    Ok(())
}

impl Scratch {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        Ok(Scratch {
            stream: stream.clone(),
            ints: stream.alloc_zeros(256)?,
            ints2: stream.alloc_zeros(256)?,
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
    /// log-softmax at temperature 1.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pick(&self, logits: &CudaBuf, rows: usize, vocab: usize, valid: usize, forbid: &[i32], temperature: f32, gumbel_seed: Option<u64>) -> Result<RowStats> {
        if rows == 0 {
            return Ok(RowStats::default());
        }
        if valid > vocab || vocab == 0 {
            bail!("vocab_pick: valid_vocab {valid} must be in 1..={vocab}");
        }
        if forbid.len() > MAX_FORBID {
            bail!("vocab_pick: {} forbidden ids is more than the CUDA kernel's {MAX_FORBID}", forbid.len());
        }
        Self::check_len("vocab_pick logits", logits.len, rows * vocab)?;
        let (nr, nv, nvalid, nf) = (to_i32("rows", rows)?, to_i32("vocab", vocab)?, to_i32("valid_vocab", valid)?, forbid.len() as i32);
        let use_gumbel = gumbel_seed.is_some() as i32;
        let seed = gumbel_seed.unwrap_or(0);
        let xs = self.as_bf16(logits)?;
        let mut guard = self.scratch()?;
        let sc = &mut *guard;
        grow(&sc.stream, &mut sc.ints, forbid.len().max(1))?;
        grow(&sc.stream, &mut sc.ints2, rows)?;
        grow(&sc.stream, &mut sc.floats, rows)?;
        if !forbid.is_empty() {
            self.stream.memcpy_htod(forbid, &mut sc.ints.slice_mut(0..forbid.len()))?;
        }
        let cfg = cfg_rows(rows, VOCAB_THREADS, (forbid.len() * 4) as u32)?;
        launch!(
            self,
            "vocab_pick_bf16",
            cfg,
            [xs.get(), &nr, &nv, &nvalid, &sc.ints, &nf, &temperature, &use_gumbel, &seed, &mut sc.ints2, &mut sc.floats]
        )?;
        let mut token = vec![0i32; rows];
        let mut logprob = vec![0f32; rows];
        self.stream.memcpy_dtoh(&sc.ints2.slice(0..rows), &mut token)?;
        self.stream.memcpy_dtoh(&sc.floats.slice(0..rows), &mut logprob)?;
        Ok(RowStats { token, logprob })
    }

    /// Weighted softmax cross-entropy: returns the per-row losses and overwrites `logits` (bf16)
    /// with `d(Σ_r weight_r · CE_r)/d logits`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cross_entropy(&self, logits: &mut CudaBuf, targets: &CudaIBuf, weights: &[f32], rows: usize, vocab: usize, valid: usize, label_smoothing: f32) -> Result<Vec<f32>> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        if valid > vocab || valid == 0 {
            bail!("cross_entropy: valid_vocab {valid} must be in 1..={vocab}");
        }
        Self::check_len("cross_entropy logits", logits.len, rows * vocab)?;
        Self::check_len("cross_entropy targets", targets.len(), rows)?;
        Self::check_len("cross_entropy weights", weights.len(), rows)?;
        if let Some((r, &t)) = targets.host[..rows].iter().enumerate().find(|(_, &t)| t < 0 || t as usize >= valid) {
            bail!("cross_entropy: target id {t} of row {r} is outside the vocabulary of {valid}");
        }
        let (nr, nv, nvalid) = (to_i32("rows", rows)?, to_i32("vocab", vocab)?, to_i32("valid_vocab", valid)?);
        let ls = label_smoothing;
        let ls_over_valid = ls / valid as f32;
        let xs = self.inout_bf16(logits)?;
        let mut guard = self.scratch()?;
        let sc = &mut *guard;
        grow(&sc.stream, &mut sc.floats, rows)?;
        grow(&sc.stream, &mut sc.floats2, rows)?;
        self.stream.memcpy_htod(&weights[..rows], &mut sc.floats.slice_mut(0..rows))?;
        let cfg = cfg_rows(rows, VOCAB_THREADS, 0)?;
        launch!(
            self,
            "cross_entropy_bf16",
            cfg,
            [xs, &targets.dev, &sc.floats, &mut sc.floats2, &nr, &nv, &nvalid, &ls, &ls_over_valid]
        )?;
        let mut loss = vec![0f32; rows];
        self.stream.memcpy_dtoh(&sc.floats2.slice(0..rows), &mut loss)?;
        Ok(loss)
    }
}
