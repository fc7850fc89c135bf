//! Dense layers (cuBLASLt), embeddings and LayerNorm (attention is in ops_attention.rs).
//! Kernels: embed.cu, layernorm.cu, rows.cu (column sums).
//! CPU twins: cpu/linear.rs, cpu/embed.rs, cpu/layernorm.rs.

use super::blas::{GemmShape, OutType};
use super::buffer::{CudaBuf, CudaIBuf};
use super::{cfg_rows, threads_for, to_i32, CudaBackend};
use anyhow::{bail, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut};

/// Largest row the LayerNorm kernel caches in shared memory (cols f32 next to the reductions'
/// static slots, within the default 48 KB a block may use). XLM-R XXL's hidden size is 4096.
const LN_MAX_COLS: usize = 8192;
/// Largest row the LayerNorm backward handles (2·cols f32 partial sums in shared memory).
const LN_BWD_MAX_COLS: usize = 6016;
/// Rows per LayerNorm-backward block (LNB_ROWS in layernorm.cu).
const LN_BWD_ROWS: usize = 32;

impl CudaBackend {
    /// `y[m,n] = x[m,k] · w[n,k]ᵀ + bias`, as the column-major `yᵀ[n,m] = op(w)·xᵀ` with
    /// A = w (stored k×n, transposed), B = x (stored k×m); the bias epilogue adds bias[n] to each
    /// of D's n rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_forward(
        &self,
        x: &CudaBuf,
        w: &CudaBuf,
        bias: Option<&CudaBuf>,
        y: &mut CudaBuf,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            bail!("linear_fwd with k = 0 is not supported on CUDA");
        }
        Self::check_len("linear_fwd x", x.len, m * k)?;
        Self::check_len("linear_fwd w", w.len, n * k)?;
        Self::check_len("linear_fwd y", y.len, m * n)?;
        if let Some(b) = bias {
            Self::check_len("linear_fwd bias", b.len, n)?;
        }
        let xs = self.as_bf16(x)?;
        let ws = self.as_bf16(w)?;
        let bs = bias.map(|b| self.as_bf16(b)).transpose()?;
        let ys = self.out_bf16(y)?;
        let shape =
            GemmShape { m: n as u64, n: m as u64, k: k as u64, trans_a: true, trans_b: false, lda: k as i64, ldb: k as i64, ldc: n as i64 };
        let (wp, _g1) = ws.get().device_ptr(&self.stream);
        let (xp, _g2) = xs.get().device_ptr(&self.stream);
        let bp = bs.as_ref().map(|b| b.get().device_ptr(&self.stream));
        let (yp, _g3) = ys.device_ptr_mut(&self.stream);
        unsafe { self.blas.matmul(shape, wp, xp, yp, OutType::Bf16, bp.as_ref().map(|b| b.0), false) }?;
        self.after_launch("cuBLASLt linear_fwd")
    }

    /// Backward of `linear_forward`:
    /// - `dx[m,k] = dy[m,n] · w[n,k]`: column-major `dxᵀ[k,m] = wᵀ(k×n) · dyᵀ(n×m)`, overwritten (bf16);
    /// - `dw[n,k] += dyᵀ · x`: column-major `dwᵀ[k,n] = xᵀ(k×m) · dy(m×n)`, beta = 1, f32;
    /// - `db[n] += Σ_rows dy`, f32 column sums.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_backward(
        &self,
        x: &CudaBuf,
        w: &CudaBuf,
        dy: &CudaBuf,
        dx: Option<&mut CudaBuf>,
        dw: &mut CudaBuf,
        db: Option<&mut CudaBuf>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        Self::check_len("linear_bwd x", x.len, m * k)?;
        Self::check_len("linear_bwd w", w.len, n * k)?;
        Self::check_len("linear_bwd dy", dy.len, m * n)?;
        Self::check_len("linear_bwd dw", dw.len, n * k)?;
        let dys = self.as_bf16(dy)?;
        if let Some(dx) = dx {
            Self::check_len("linear_bwd dx", dx.len, m * k)?;
            if m > 0 && k > 0 {
                let ws = self.as_bf16(w)?;
                let dxs = self.out_bf16(dx)?;
                if n == 0 {
                    self.stream.memset_zeros(dxs)?;
                } else {
                    let shape = GemmShape {
                        m: k as u64,
                        n: m as u64,
                        k: n as u64,
                        trans_a: false,
                        trans_b: false,
                        lda: k as i64,
                        ldb: n as i64,
                        ldc: k as i64,
                    };
                    let (wp, _g1) = ws.get().device_ptr(&self.stream);
                    let (gp, _g2) = dys.get().device_ptr(&self.stream);
                    let (dp, _g3) = dxs.device_ptr_mut(&self.stream);
                    unsafe { self.blas.matmul(shape, wp, gp, dp, OutType::Bf16, None, false) }?;
                    self.after_launch("cuBLASLt linear_bwd dx")?;
                }
            }
        }
        if m > 0 && n > 0 && k > 0 {
            let xs = self.as_bf16(x)?;
            let dws = self.acc_f32(dw)?;
            let shape = GemmShape {
                m: k as u64,
                n: n as u64,
                k: m as u64,
                trans_a: false,
                trans_b: true,
                lda: k as i64,
                ldb: n as i64,
                ldc: k as i64,
            };
            let (xp, _g1) = xs.get().device_ptr(&self.stream);
            let (gp, _g2) = dys.get().device_ptr(&self.stream);
            let (dp, _g3) = dws.device_ptr_mut(&self.stream);
            unsafe { self.blas.matmul(shape, xp, gp, dp, OutType::F32, None, true) }?;
            self.after_launch("cuBLASLt linear_bwd dw")?;
        }
        if let Some(db) = db {
            Self::check_len("linear_bwd db", db.len, n)?;
            let dbs = self.acc_f32(db)?;
            self.col_sum_add(dys.get(), dbs, m, n)?;
        }
        Ok(())
    }

    /// Host check of embedding ids against the table sizes (an id past the table would read
    /// outside it on the GPU).
    fn check_ids(what: &str, ids: &CudaIBuf, tokens: usize, table: &CudaBuf, hidden: usize) -> Result<()> {
        Self::check_len(&format!("{what} ids"), ids.len(), tokens)?;
        let rows = table.len / hidden;
        if let Some((i, &id)) = ids.host[..tokens].iter().enumerate().find(|(_, &id)| id < 0 || id as usize >= rows) {
            bail!("{what}: id {id} at token {i} is outside the table's {rows} rows");
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn embed_forward(
        &self,
        ids: &CudaIBuf,
        pos_ids: &CudaIBuf,
        word: &CudaBuf,
        pos: &CudaBuf,
        typ: &CudaBuf,
        out: &mut CudaBuf,
        tokens: usize,
        hidden: usize,
    ) -> Result<()> {
        if tokens == 0 || hidden == 0 {
            return Ok(());
        }
        Self::check_ids("embed_fwd word", ids, tokens, word, hidden)?;
        Self::check_ids("embed_fwd position", pos_ids, tokens, pos, hidden)?;
        Self::check_len("embed_fwd token-type table", typ.len, hidden)?;
        Self::check_len("embed_fwd output", out.len, tokens * hidden)?;
        let (nt, nh) = (to_i32("tokens", tokens)?, to_i32("hidden", hidden)?);
        let (ws, ps, ts) = (self.as_bf16(word)?, self.as_bf16(pos)?, self.as_bf16(typ)?);
        let os = self.out_bf16(out)?;
        let cfg = cfg_rows(tokens, threads_for(hidden, 256), 0)?;
        launch!(self, "embed_fwd_bf16", cfg, [&ids.dev, &pos_ids.dev, ws.get(), ps.get(), ts.get(), os, &nt, &nh])
    }

    /// Scatter-add into the tables' gradients (made f32): word and position rows with atomics, the
    /// token-type row as a column sum.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn embed_backward(
        &self,
        ids: &CudaIBuf,
        pos_ids: &CudaIBuf,
        dout: &CudaBuf,
        dword: &mut CudaBuf,
        dpos: &mut CudaBuf,
        dtyp: &mut CudaBuf,
        tokens: usize,
        hidden: usize,
        padding_idx: i32,
    ) -> Result<()> {
        if tokens == 0 || hidden == 0 {
            return Ok(());
        }
        Self::check_ids("embed_bwd word", ids, tokens, dword, hidden)?;
        Self::check_ids("embed_bwd position", pos_ids, tokens, dpos, hidden)?;
        Self::check_len("embed_bwd token-type gradient", dtyp.len, hidden)?;
        Self::check_len("embed_bwd dout", dout.len, tokens * hidden)?;
        let (nt, nh) = (to_i32("tokens", tokens)?, to_i32("hidden", hidden)?);
        let gs = self.as_bf16(dout)?;
        let dw = self.acc_f32(dword)?;
        let dp = self.acc_f32(dpos)?;
        let cfg = cfg_rows(tokens, threads_for(hidden, 256), 0)?;
        launch!(self, "embed_bwd_bf16", cfg, [&ids.dev, &pos_ids.dev, gs.get(), dw, dp, &nt, &nh, &padding_idx])?;
        let dt = self.acc_f32(dtyp)?;
        self.col_sum_add(gs.get(), dt, tokens, hidden)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layernorm_forward(
        &self,
        x: &CudaBuf,
        residual: Option<&CudaBuf>,
        sum: Option<&mut CudaBuf>,
        gamma: &CudaBuf,
        beta: &CudaBuf,
        out: &mut CudaBuf,
        mean: &mut CudaBuf,
        rstd: &mut CudaBuf,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
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
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layernorm_backward(
        &self,
        x: &CudaBuf,
        dout: &CudaBuf,
        gamma: &CudaBuf,
        mean: &CudaBuf,
        rstd: &CudaBuf,
        dx: &mut CudaBuf,
        accumulate: bool,
        dgamma: &mut CudaBuf,
        dbeta: &mut CudaBuf,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
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
