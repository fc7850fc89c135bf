//! Attention forward and backward (flash-style: the T×T probabilities are never stored), with a
//! key-padding mask and attention-probability dropout drawing the CPU's Philox mask.
//! Kernels: attention.cu, attention_bwd.cu (shared geometry and dropout in attention.cuh).
//! CPU twin: cpu/attention.rs.

use super::buffer::{CudaBuf, CudaIBuf};
use super::kernels::Kernels;
use super::{to_i32, CudaBackend};
use crate::backend::{AttnShape, Dropout};
use anyhow::{bail, Context, Result};
use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::LaunchConfig;

/// Largest head the kernels handle (4 dims per lane).
const MAX_HEAD_DIM: usize = 128;
/// Rows a block owns (ATT_QROWS in attention.cuh) and the tile the other side streams in (ATT_KT).
const QROWS: usize = 16;
const KT: usize = 32;
const THREADS: u32 = 128;
/// Dynamic shared memory a block may use without opting in.
const SMEM_DEFAULT_LIMIT: usize = 48 * 1024;

/// Kernel variants by head dims per lane: index `head_dim.div_ceil(32) - 1`.
const FWD: [&str; 4] = ["attn_fwd_d32", "attn_fwd_d64", "attn_fwd_d96", "attn_fwd_d128"];
const BWD_DQ: [&str; 4] = ["attn_bwd_dq_d32", "attn_bwd_dq_d64", "attn_bwd_dq_d96", "attn_bwd_dq_d128"];
const BWD_DKDV: [&str; 4] = ["attn_bwd_dkdv_d32", "attn_bwd_dkdv_d64", "attn_bwd_dkdv_d96", "attn_bwd_dkdv_d128"];

/// `attn_odd_stride` of attention.cuh.
fn odd_stride(d: usize) -> usize {
    if d % 2 == 1 {
        d
    } else {
        d + 1
    }
}

/// Dynamic shared memory (bytes) of each kernel at head size `d`, as laid out in the .cu files.
fn fwd_smem(d: usize) -> usize {
    (KT * odd_stride(d) + KT * d + QROWS * d) * 4
}
fn bwd_dq_smem(d: usize) -> usize {
    (2 * KT * odd_stride(d) + 2 * QROWS * d) * 4
}
fn bwd_dkdv_smem(d: usize) -> usize {
    (2 * KT * odd_stride(d) + 2 * QROWS * d + 2 * KT) * 4
}

/// Lets every attention kernel variant take the shared memory its largest head needs (the
/// backward at head_dim 128 needs a little over the 48 KB a block gets by default). Called once
/// after the kernels are loaded.
pub(crate) fn allow_attention_smem(kernels: &Kernels) -> Result<()> {
    for v in 0..4 {
        let d = 32 * (v + 1);
        for (name, bytes) in [(FWD[v], fwd_smem(d)), (BWD_DQ[v], bwd_dq_smem(d)), (BWD_DKDV[v], bwd_dkdv_smem(d))] {
            if bytes > SMEM_DEFAULT_LIMIT {
                kernels
                    .get(name)?
                    .set_attribute(CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
                    .with_context(|| format!("allowing {bytes} bytes of shared memory to {name}"))?;
            }
        }
    }
    Ok(())
}

/// The dropout arguments every attention kernel takes: p (0 = off) and the keep scale 1/(1-p),
/// computed in f32 as the CPU twin does.
fn drop_args(drop: Dropout) -> (f32, f32) {
    if drop.active() {
        (drop.p, 1.0 / (1.0 - drop.p))
    } else {
        (0.0, 1.0)
    }
}

/// Launch geometry shared by the three kernels: one block per (row block, head, batch).
struct Geometry {
    t: i32,
    h: i32,
    d: i32,
    scale: f32,
    variant: usize,
    grid: (u32, u32, u32),
}

impl Geometry {
    fn cfg(&self, smem: usize) -> LaunchConfig {
        LaunchConfig { grid_dim: self.grid, block_dim: (THREADS, 1, 1), shared_mem_bytes: smem as u32 }
    }
}

/// Checks the shape (and `None` for an empty one, which has nothing to compute).
fn geometry(op: &str, s: AttnShape) -> Result<Option<Geometry>> {
    let AttnShape { batch, seq, heads, head_dim } = s;
    if batch == 0 || seq == 0 || heads == 0 || head_dim == 0 {
        return Ok(None);
    }
    if head_dim > MAX_HEAD_DIM {
        bail!("{op}: head_dim {head_dim} is larger than the CUDA kernels' {MAX_HEAD_DIM}");
    }
    if batch > 65535 || heads > 65535 {
        bail!("{op}: batch {batch} or heads {heads} exceeds 65535");
    }
    let (t, h, d) = (to_i32("seq", seq)?, to_i32("heads", heads)?, to_i32("head_dim", head_dim)?);
    Ok(Some(Geometry {
        t,
        h,
        d,
        scale: 1.0 / (head_dim as f32).sqrt(),
        variant: head_dim.div_ceil(32) - 1,
        grid: (seq.div_ceil(QROWS) as u32, heads as u32, batch as u32),
    }))
}

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_forward(
        &self,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        key_mask: &CudaIBuf,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        shape: AttnShape,
        drop: Dropout,
        stream: u64,
    ) -> Result<()> {
        let Some(g) = geometry("attention_fwd", shape)? else { return Ok(()) };
        let n = shape.tokens() * shape.hidden();
        for (what, len) in [("q", q.len), ("k", k.len), ("v", v.len), ("out", out.len)] {
            Self::check_len(&format!("attention_fwd {what}"), len, n)?;
        }
        Self::check_len("attention_fwd lse", lse.len, shape.batch * shape.heads * shape.seq)?;
        Self::check_len("attention_fwd key mask", key_mask.len(), shape.batch * shape.seq)?;
        let (p, keep_scale) = drop_args(drop);
        let seed = drop.seed;
        let (qs, kk, vs) = (self.as_bf16(q)?, self.as_bf16(k)?, self.as_bf16(v)?);
        let os = self.out_bf16(out)?;
        let ls = self.out_f32(lse)?;
        let cfg = g.cfg(fwd_smem(shape.head_dim));
        launch!(
            self,
            FWD[g.variant],
            cfg,
            [qs.get(), kk.get(), vs.get(), &key_mask.dev, os, ls, &g.t, &g.h, &g.d, &g.scale, &p, &keep_scale, &seed, &stream]
        )
    }

    /// Two passes (attention_bwd.cu says why not atomics): dQ and D_i = dO_i·O_i per query row,
    /// then dK and dV per key row. `dq`, `dk`, `dv` are overwritten (bf16).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_backward(
        &self,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        key_mask: &CudaIBuf,
        out: &CudaBuf,
        lse: &CudaBuf,
        dout: &CudaBuf,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        shape: AttnShape,
        drop: Dropout,
        stream: u64,
    ) -> Result<()> {
        let Some(g) = geometry("attention_bwd", shape)? else { return Ok(()) };
        let n = shape.tokens() * shape.hidden();
        let rows = shape.batch * shape.heads * shape.seq;
        for (what, len) in [("q", q.len), ("k", k.len), ("v", v.len), ("out", out.len), ("dout", dout.len), ("dq", dq.len), ("dk", dk.len), ("dv", dv.len)] {
            Self::check_len(&format!("attention_bwd {what}"), len, n)?;
        }
        Self::check_len("attention_bwd lse", lse.len, rows)?;
        Self::check_len("attention_bwd key mask", key_mask.len(), shape.batch * shape.seq)?;
        let (p, keep_scale) = drop_args(drop);
        let seed = drop.seed;
        let (qs, kk, vs) = (self.as_bf16(q)?, self.as_bf16(k)?, self.as_bf16(v)?);
        let (os, gs) = (self.as_bf16(out)?, self.as_bf16(dout)?);
        let ls = self.as_f32(lse)?;
        let mut drow = self.alloc_zeros::<f32>(rows)?;
        {
            let dqs = self.out_bf16(dq)?;
            let cfg = g.cfg(bwd_dq_smem(shape.head_dim));
            launch!(
                self,
                BWD_DQ[g.variant],
                cfg,
                [
                    qs.get(), kk.get(), vs.get(), &key_mask.dev, os.get(), gs.get(), ls.get(), &mut drow, dqs,
                    &g.t, &g.h, &g.d, &g.scale, &p, &keep_scale, &seed, &stream
                ]
            )?;
        }
        let dks = self.out_bf16(dk)?;
        let dvs = self.out_bf16(dv)?;
        let cfg = g.cfg(bwd_dkdv_smem(shape.head_dim));
        launch!(
            self,
            BWD_DKDV[g.variant],
            cfg,
            [
                qs.get(), kk.get(), vs.get(), &key_mask.dev, gs.get(), ls.get(), &drow, dks, dvs,
                &g.t, &g.h, &g.d, &g.scale, &p, &keep_scale, &seed, &stream
            ]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the largest backward variant should need more than the default shared memory, and
    /// nothing may exceed what an sm_80+ block can opt into (99 KB; Hopper allows 227 KB).
    #[test]
    fn shared_memory_fits() {
        for d in 1..=MAX_HEAD_DIM {
            for bytes in [fwd_smem(d), bwd_dq_smem(d), bwd_dkdv_smem(d)] {
                assert!(bytes <= 99 * 1024, "head_dim {d}: {bytes} bytes");
            }
            assert!(fwd_smem(d) <= SMEM_DEFAULT_LIMIT, "the forward at head_dim {d} should not need the opt-in");
        }
        assert!(bwd_dkdv_smem(128) > SMEM_DEFAULT_LIMIT);
    }
}
