//! The fused softmax cross-entropy over the vocabulary (loss and its gradient in place).
//! Kernels: vocab.cu. CPU twin: cpu/vocab.rs.

use super::buffer::{CudaBuf, CudaIBuf};
use super::sampler::{grow, VOCAB_THREADS};
use super::{cfg_rows, to_i32, CudaBackend};
use crate::backend::VocabShape;
use anyhow::{bail, Result};

impl CudaBackend {
    /// Weighted softmax cross-entropy: returns the per-row losses and overwrites `logits` (bf16)
    /// with `d(Σ_r weight_r · CE_r)/d logits`.
    pub(crate) fn cross_entropy_fwd_bwd(
        &self,
        logits: &mut CudaBuf,
        targets: &CudaIBuf,
        weights: &[f32],
        shape: VocabShape,
        label_smoothing: f32,
    ) -> Result<Vec<f32>> {
        let VocabShape { rows, vocab, valid } = shape;
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
        launch!(self, "cross_entropy_bf16", cfg, [xs, &targets.dev, &sc.floats, &mut sc.floats2, &nr, &nv, &nvalid, &ls, &ls_over_valid])?;
        let mut loss = vec![0f32; rows];
        self.to_host(&sc.floats2.slice(0..rows), &mut loss)?;
        Ok(loss)
    }
}
