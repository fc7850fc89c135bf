//! Token, position and type embeddings, forward and backward. Kernels: embed.cu.
//! CPU twin: cpu/embed.rs.

use super::buffer::{CudaBuf, CudaIBuf};
use super::{cfg_rows, threads_for, to_i32, CudaBackend};
use crate::backend::{EmbedGrads, EmbedShape, EmbedTables};
use anyhow::{bail, Result};

impl CudaBackend {
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

    pub(crate) fn embed_fwd(
        &self,
        ids: &CudaIBuf,
        pos_ids: &CudaIBuf,
        tables: EmbedTables<'_, CudaBuf>,
        out: &mut CudaBuf,
        shape: EmbedShape,
    ) -> Result<()> {
        let EmbedTables { word, pos, typ } = tables;
        let EmbedShape { tokens, hidden } = shape;
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
    pub(crate) fn embed_bwd(
        &self,
        ids: &CudaIBuf,
        pos_ids: &CudaIBuf,
        dout: &CudaBuf,
        grads: EmbedGrads<'_, CudaBuf>,
        shape: EmbedShape,
        padding_idx: i32,
    ) -> Result<()> {
        let EmbedGrads { word: dword, pos: dpos, typ: dtyp } = grads;
        let EmbedShape { tokens, hidden } = shape;
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
}
