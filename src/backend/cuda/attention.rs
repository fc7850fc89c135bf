//! Attention forward and backward (flash-style: the T×T probabilities are never stored), with a
//! key-padding mask and attention-probability dropout drawing the CPU's Philox mask.
//! Kernels: attention.cu, attention_bwd.cu (shared geometry and dropout in attention.cuh).
//! CPU twin: cpu/attention.rs.

use super::buffer::{CudaBuf, CudaIBuf};
use super::kernels::Kernels;
use super::{to_i32, CudaBackend};
use crate::backend::{AttnCall, AttnSaved, Qkv, QkvGrads};
use crate::backend::{AttnShape, Dropout};
use anyhow::{bail, Context, Result};
use cudarc::driver::sys::{CUdevice_attribute_enum, CUfunction_attribute_enum};
use cudarc::driver::{CudaContext, LaunchConfig};

/// Largest head the kernels handle (8 chunks of 16 dims; the shared tiles grow with it).
const MAX_HEAD_DIM: usize = 128;
/// Rows a block owns and the tile the other side streams in (ATT_KT in attention.cuh): 4 warps of
/// 16 rows each.
const ROWS: usize = 64;
const WARPS: usize = 4;
const THREADS: u32 = (WARPS * 32) as u32;
/// Dynamic shared memory a block may use without opting in.
const SMEM_DEFAULT_LIMIT: usize = 48 * 1024;

const FWD: &str = "attn_fwd";
const BWD_DQ: &str = "attn_bwd_dq";
const BWD_DKDV: &str = "attn_bwd_dkdv";

/// The shared-memory pieces of attention.cuh at head size `d` (padded to 16 for the fragments):
/// a bf16 tile of ROWS rows (stride `d16 + 8`), a warp's f32 accumulator tile (16 rows, stride
/// `d16 + 4`), and the per-warp score area (ATT_SCORE_BYTES: 16 f32 rows of stride ROWS + 4, or two
/// 16-row bf16 tiles of stride ROWS + 8).
fn tile_bytes(d: usize) -> usize {
    ROWS * (d.next_multiple_of(16) + 8) * 2
}
fn acc_bytes(d: usize) -> usize {
    16 * (d.next_multiple_of(16) + 4) * 4
}
const SCORE_BYTES: usize = {
    let (f32_scores, bf16_pair) = (16 * (ROWS + 4) * 4, 2 * 16 * (ROWS + 8) * 2);
    if f32_scores > bf16_pair {
        f32_scores
    } else {
        bf16_pair
    }
};

/// Dynamic shared memory (bytes) of each kernel at head size `d`, in the order the .cu files carve it.
fn fwd_smem(d: usize) -> usize {
    3 * tile_bytes(d) + WARPS * (SCORE_BYTES + acc_bytes(d)) + ROWS * 4
}
fn bwd_dq_smem(d: usize) -> usize {
    4 * tile_bytes(d) + WARPS * (SCORE_BYTES + acc_bytes(d)) + ROWS * 4
}
fn bwd_dkdv_smem(d: usize) -> usize {
    4 * tile_bytes(d) + WARPS * (SCORE_BYTES + 2 * acc_bytes(d)) + 2 * ROWS * 4
}

/// Lets each attention kernel take the shared memory its largest head needs (everything past 48 KB
/// must be opted into), capped at what the GPU allows a block: Hopper's 227 KB covers every head,
/// and on a smaller GPU only the heads that do not fit fail, at launch. Called once after the
/// kernels are loaded.
pub(crate) fn allow_attention_smem(ctx: &CudaContext, kernels: &Kernels) -> Result<()> {
    let optin = ctx
        .attribute(CUdevice_attribute_enum::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .context("querying the GPU's shared memory per block")?;
    let optin = usize::try_from(optin).unwrap_or(0);
    for (name, smem) in [(FWD, fwd_smem as fn(usize) -> usize), (BWD_DQ, bwd_dq_smem), (BWD_DKDV, bwd_dkdv_smem)] {
        let bytes = smem(MAX_HEAD_DIM).min(optin);
        if bytes > SMEM_DEFAULT_LIMIT {
            kernels
                .get(name)?
                .set_attribute(CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
                .with_context(|| format!("allowing {bytes} bytes of shared memory to {name}"))?;
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
    Ok(Some(Geometry { t, h, d, scale: 1.0 / (head_dim as f32).sqrt(), grid: (seq.div_ceil(ROWS) as u32, heads as u32, batch as u32) }))
}

impl CudaBackend {
    pub(crate) fn attention_fwd(
        &self,
        qkv: Qkv<'_, CudaBuf>,
        key_mask: &CudaIBuf,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        call: AttnCall,
    ) -> Result<()> {
        let Qkv { q, k, v } = qkv;
        let AttnCall { shape, drop, stream } = call;
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
            FWD,
            cfg,
            [qs.get(), kk.get(), vs.get(), &key_mask.dev, os, ls, &g.t, &g.h, &g.d, &g.scale, &p, &keep_scale, &seed, &stream]
        )
    }

    /// Two passes (attention_bwd.cu says why not atomics): dQ and D_i = dO_i·O_i per query row,
    /// then dK and dV per key row. `dq`, `dk`, `dv` are overwritten (bf16).
    pub(crate) fn attention_bwd(
        &self,
        qkv: Qkv<'_, CudaBuf>,
        key_mask: &CudaIBuf,
        saved: AttnSaved<'_, CudaBuf>,
        dout: &CudaBuf,
        grads: QkvGrads<'_, CudaBuf>,
        call: AttnCall,
    ) -> Result<()> {
        let Qkv { q, k, v } = qkv;
        let AttnCall { shape, drop, stream } = call;
        let AttnSaved { out, lse } = saved;
        let QkvGrads { dq, dk, dv } = grads;
        let Some(g) = geometry("attention_bwd", shape)? else { return Ok(()) };
        let n = shape.tokens() * shape.hidden();
        let rows = shape.batch * shape.heads * shape.seq;
        for (what, len) in
            [("q", q.len), ("k", k.len), ("v", v.len), ("out", out.len), ("dout", dout.len), ("dq", dq.len), ("dk", dk.len), ("dv", dv.len)]
        {
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
                BWD_DQ,
                cfg,
                [
                    qs.get(),
                    kk.get(),
                    vs.get(),
                    &key_mask.dev,
                    os.get(),
                    gs.get(),
                    ls.get(),
                    &mut drow,
                    dqs,
                    &g.t,
                    &g.h,
                    &g.d,
                    &g.scale,
                    &p,
                    &keep_scale,
                    &seed,
                    &stream
                ]
            )?;
        }
        let dks = self.out_bf16(dk)?;
        let dvs = self.out_bf16(dv)?;
        let cfg = g.cfg(bwd_dkdv_smem(shape.head_dim));
        launch!(
            self,
            BWD_DKDV,
            cfg,
            [
                qs.get(),
                kk.get(),
                vs.get(),
                &key_mask.dev,
                gs.get(),
                ls.get(),
                &drow,
                dks,
                dvs,
                &g.t,
                &g.h,
                &g.d,
                &g.scale,
                &p,
                &keep_scale,
                &seed,
                &stream
            ]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every head fits what a Hopper block can opt into (227 KB), and at XLM-R's head_dim 64 (and
    /// below) two blocks of each kernel fit one SM (228 KB, 1 KB of it reserved per block).
    #[test]
    fn shared_memory_fits() {
        for d in 1..=MAX_HEAD_DIM {
            for bytes in [fwd_smem(d), bwd_dq_smem(d), bwd_dkdv_smem(d)] {
                assert!(bytes <= 227 * 1024, "head_dim {d}: {bytes} bytes");
                if d <= 64 {
                    assert!(2 * (bytes + 1024) <= 228 * 1024, "head_dim {d}: {bytes} bytes, not two blocks per SM");
                }
            }
        }
    }

    /// The sizes the kernels' layouts imply (written out once more by the emulator,
    /// scripts/emulate-kernels/main.cpp, which checks that no kernel writes past them).
    #[test]
    fn shared_memory_sizes() {
        assert_eq!(SCORE_BYTES, 4608);
        assert_eq!((fwd_smem(64), bwd_dq_smem(64), bwd_dkdv_smem(64)), (63744, 72960, 90624));
        assert_eq!((fwd_smem(128), bwd_dq_smem(128), bwd_dkdv_smem(128)), (104704, 122112, 156160));
        assert_eq!(fwd_smem(7), fwd_smem(16));
    }
}
