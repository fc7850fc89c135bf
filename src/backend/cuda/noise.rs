//! The RDM training noise on the device (`kernels/noise.cu`).

use super::buffer::{CudaBuf, CudaIBuf};
use super::{cfg_rows, to_i32, CudaBackend};
use crate::backend::LossSlots;
use crate::backend::NoiseSpec;
use anyhow::{bail, Result};

const THREADS: u32 = 256;

impl CudaBackend {
    /// `Backend::q_sample`: two launches, then one read-back of the masked count. The host copies
    /// of `ids`, `rows` and `targets` are refreshed from the device, so the later embedding,
    /// gather, scatter and cross-entropy checks run on what the kernel wrote (positions in range
    /// and distinct, targets in the vocabulary).
    pub(crate) fn q_sample(
        &self,
        ids: &mut CudaIBuf,
        seq: usize,
        src_len: &[i32],
        spec: &NoiseSpec,
        out: LossSlots<'_, CudaBuf, CudaIBuf>,
    ) -> Result<usize> {
        let LossSlots { rows, targets, weights } = out;
        let (b, n) = (src_len.len(), ids.len());
        if n != 2 * b * seq {
            bail!("q_sample: {n} ids for 2×{b} rows of {seq}");
        }
        for (what, have) in [("rows", rows.len()), ("targets", targets.len()), ("weights", weights.len)] {
            Self::check_len(&format!("q_sample {what}"), have, n)?;
        }
        if let Some((i, &s)) = src_len.iter().enumerate().find(|(_, &s)| s < 0) {
            bail!("q_sample: example {i} has a negative source length {s}");
        }
        if spec.steps == 0 {
            bail!("q_sample: the number of diffusion steps must be at least 1");
        }
        if n == 0 {
            return Ok(0);
        }
        // Flat positions are i32 in the kernels.
        to_i32("batch positions", n)?;
        let (ex, rows2, seq32) = (to_i32("examples", b)?, to_i32("rows", 2 * b)?, to_i32("seq", seq)?);
        let rw = crate::backend::contract::reweighting_code(spec.reweighting);
        let src = self.upload_i32(src_len)?;
        let mut flags = self.alloc_zeros::<i32>(n)?;
        let mut counts = self.alloc_zeros::<i32>(2 * b)?;
        let mut row_w = self.alloc_zeros::<f32>(2 * b)?;
        let mut total = self.alloc_zeros::<i32>(1)?;
        launch!(
            self,
            "q_sample_mask",
            cfg_rows(b, THREADS, 0)?,
            [
                &ids.dev,
                &src.dev,
                &ex,
                &seq32,
                &spec.pad,
                &spec.steps,
                &spec.key,
                &spec.first_example,
                &rw,
                &spec.scale,
                &mut flags,
                &mut counts,
                &mut row_w
            ]
        )?;
        let w = self.out_f32(weights)?;
        launch!(
            self,
            "q_sample_compact",
            cfg_rows(2 * b, THREADS, 0)?,
            [&mut ids.dev, &flags, &counts, &row_w, &rows2, &seq32, &spec.mask_id, &mut rows.dev, &mut targets.dev, w, &mut total]
        )?;
        let mut count = [0i32];
        self.to_host(&total, &mut count)?;
        let count = count[0] as usize;
        if count > n {
            bail!("q_sample: the kernel reported {count} masked slots in a batch of {n}");
        }
        self.to_host(&ids.dev.slice(0..n), &mut ids.host[..])?;
        for buf in [rows, targets] {
            if count > 0 {
                self.to_host(&buf.dev.slice(0..count), &mut buf.host[..count])?;
            }
        }
        Ok(count)
    }
}
