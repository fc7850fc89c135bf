//! Residual add + LayerNorm forward and LayerNorm backward. Kernels: layernorm.cu.
//! CPU twin: cpu/layernorm.rs.

use super::buffer::CudaBuf;
use super::{cfg_rows, threads_for, to_i32, CudaBackend};
use crate::backend::{LnGrads, LnParams, LnSaved, LnStats, Residual, RowsShape};
use anyhow::{bail, Result};

/// Largest row the LayerNorm kernel caches in shared memory (cols f32 next to the reductions'
/// static slots, within the default 48 KB a block may use). XLM-R XXL's hidden size is 4096.
const LN_MAX_COLS: usize = 8192;
/// Largest row the LayerNorm backward handles (2·cols f32 partial sums in shared memory).
const LN_BWD_MAX_COLS: usize = 6016;
/// Rows per LayerNorm-backward block (LNB_ROWS in layernorm.cu).
const LN_BWD_ROWS: usize = 32;

impl CudaBackend {
    pub(crate) fn add_layernorm_fwd(
        &self,
        x: &CudaBuf,
        residual: Option<Residual<'_, CudaBuf>>,
        params: LnParams<'_, CudaBuf>,
        out: &mut CudaBuf,
        stats: LnStats<'_, CudaBuf>,
        shape: RowsShape,
    ) -> Result<()> {
        let (residual, sum) = Residual::unzip(residual);
        let LnParams { gamma, beta, eps } = params;
        let LnStats { mean, rstd } = stats;
        let RowsShape { rows, cols } = shape;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        if cols > LN_MAX_COLS {
            bail!("add_layernorm_fwd: rows of {cols} columns exceed the CUDA kernel's {LN_MAX_COLS}");
        }
        let n = rows * cols;
        Self::check_len("add_layernorm_fwd x", x.len, n)?;
        Self::check_len("add_layernorm_fwd gamma", gamma.len, cols)?;
        Self::check_len("add_layernorm_fwd beta", beta.len, cols)?;
        Self::check_len("add_layernorm_fwd out", out.len, n)?;
        Self::check_len("add_layernorm_fwd mean", mean.len, rows)?;
        Self::check_len("add_layernorm_fwd rstd", rstd.len, rows)?;
        let (nr, nc) = (to_i32("rows", rows)?, to_i32("cols", cols)?);
        let xs = self.as_bf16(x)?;
        let (gs, bs) = (self.as_bf16(gamma)?, self.as_bf16(beta)?);
        let os = self.out_bf16(out)?;
        let ms = self.out_f32(mean)?;
        let rs = self.out_f32(rstd)?;
        let cfg = cfg_rows(rows, threads_for(cols, 256), (cols * 4) as u32)?;
        let name = "add_layernorm_fwd_bf16";
        match residual {
            Some(res) => {
                let Some(sum) = sum else { bail!("add_layernorm_fwd: a residual needs a `sum` buffer") };
                Self::check_len("add_layernorm_fwd residual", res.len, n)?;
                Self::check_len("add_layernorm_fwd sum", sum.len, n)?;
                let res_s = self.as_bf16(res)?;
                let ss = self.out_bf16(sum)?;
                launch!(self, name, cfg, [xs.get(), res_s.get(), ss, gs.get(), bs.get(), os, ms, rs, &nr, &nc, &eps])
            }
            None => {
                let null = 0u64;
                launch!(self, name, cfg, [xs.get(), &null, &null, gs.get(), bs.get(), os, ms, rs, &nr, &nc, &eps])
            }
        }
    }

    /// Backward of LayerNorm from its input `x` (the saved sum) and the saved f32 statistics.
    /// `dx` (bf16) is overwritten or added to; `dgamma`, `dbeta` accumulate in f32.
    pub(crate) fn layernorm_bwd(
        &self,
        x: &CudaBuf,
        dout: &CudaBuf,
        saved: LnSaved<'_, CudaBuf>,
        grads: LnGrads<'_, CudaBuf>,
        shape: RowsShape,
    ) -> Result<()> {
        let LnSaved { gamma, mean, rstd } = saved;
        let LnGrads { dx, accumulate, dgamma, dbeta } = grads;
        let RowsShape { rows, cols } = shape;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        if cols > LN_BWD_MAX_COLS {
            bail!("layernorm_bwd: rows of {cols} columns exceed the CUDA kernel's {LN_BWD_MAX_COLS}");
        }
        let n = rows * cols;
        for (what, len, need) in [("x", x.len, n), ("dout", dout.len, n), ("dx", dx.len, n), ("gamma", gamma.len, cols)] {
            Self::check_len(&format!("layernorm_bwd {what}"), len, need)?;
        }
        for (what, len, need) in
            [("dgamma", dgamma.len, cols), ("dbeta", dbeta.len, cols), ("mean", mean.len, rows), ("rstd", rstd.len, rows)]
        {
            Self::check_len(&format!("layernorm_bwd {what}"), len, need)?;
        }
        let (nr, nc, acc) = (to_i32("rows", rows)?, to_i32("cols", cols)?, accumulate as i32);
        let (xs, gs, gm) = (self.as_bf16(x)?, self.as_bf16(dout)?, self.as_bf16(gamma)?);
        let (ms, rs) = (self.as_f32(mean)?, self.as_f32(rstd)?);
        let dxs = if accumulate { self.inout_bf16(dx)? } else { self.out_bf16(dx)? };
        let dg = self.acc_f32(dgamma)?;
        let db = self.acc_f32(dbeta)?;
        let cfg = cfg_rows(rows.div_ceil(LN_BWD_ROWS), threads_for(cols, 256), (2 * cols * 4) as u32)?;
        launch!(self, "layernorm_bwd_bf16", cfg, [xs.get(), gs.get(), gm.get(), ms.get(), rs.get(), dxs, &acc, dg, db, &nr, &nc])
    }
}
