//! The collectives data-parallel training needs, over any backend: nothing to do for one process
//! (`Solo`), NCCL on the CUDA backend's stream for several (`NcclCollective`).

use super::nccl::{self, Comm, UniqueId};
use crate::backend::cuda::{CudaBackend, CudaBuf};
use crate::backend::Backend;
use anyhow::{anyhow, Context, Result};
use cudarc::driver::DevicePtrMut;
use std::any::Any;
use std::ffi::c_void;

/// Sums over the ranks. Every rank ends with the same bits (NCCL reduces in one order for all).
pub trait Collective<B: Backend> {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Sums each buffer over the ranks, in place, as f32.
    fn all_reduce_sum(&self, be: &B, bufs: &mut [B::Buf]) -> Result<()>;
    /// Sums host numbers over the ranks.
    fn sum_host(&self, be: &B, vals: &mut [f32]) -> Result<()>;
}

/// One process: every sum is already complete.
pub struct Solo;

impl<B: Backend> Collective<B> for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _be: &B, _bufs: &mut [B::Buf]) -> Result<()> {
        Ok(())
    }
    fn sum_host(&self, _be: &B, _vals: &mut [f32]) -> Result<()> {
        Ok(())
    }
}

/// NCCL on the CUDA backend's stream.
pub struct NcclCollective {
    comm: Comm,
}

/// The communicator of rank `rank` of `world` on backend `be`, which must be the CUDA backend
/// when `world > 1`.
pub fn open<B: Backend>(be: &B, rank: usize, world: usize, id: Option<UniqueId>) -> Result<Box<dyn Collective<B>>> {
    if world == 1 {
        return Ok(Box::new(Solo));
    }
    let cuda = cuda_of(be)?;
    let id = id.ok_or_else(|| anyhow!("internal: rank {rank} of {world} has no NCCL id"))?;
    cuda.stream().context().bind_to_thread().context("making the CUDA device current for NCCL")?;
    Ok(Box::new(NcclCollective { comm: Comm::init(rank, world, id)? }))
}

fn cuda_of<B: Backend>(be: &B) -> Result<&CudaBackend> {
    (be as &dyn Any)
        .downcast_ref::<CudaBackend>()
        .ok_or_else(|| anyhow!("training on several processes needs the CUDA backend (NCCL); {} cannot take part", be.name()))
}

impl NcclCollective {
    /// Waits for the collectives queued on the stream and reports any NCCL failure.
    fn finish(&self, be: &CudaBackend, what: &str) -> Result<()> {
        let synced = be.synchronize();
        // A dead peer shows as NCCL's asynchronous error, which names the cause better than CUDA.
        self.comm.async_error(what)?;
        synced.with_context(|| format!("rank {}: after NCCL {what}", self.comm.rank))
    }
}

impl<B: Backend> Collective<B> for NcclCollective {
    fn rank(&self) -> usize {
        self.comm.rank
    }
    fn world(&self) -> usize {
        self.comm.world
    }

    fn all_reduce_sum(&self, be: &B, bufs: &mut [B::Buf]) -> Result<()> {
        let cuda = cuda_of(be)?;
        let stream = cuda.stream().clone();
        let api = self.comm.api();
        // Every buffer becomes f32 storage first .
        let mut slices = Vec::with_capacity(bufs.len());
        for b in bufs.iter_mut() {
            let b = (b as &mut dyn Any).downcast_mut::<CudaBuf>().ok_or_else(|| anyhow!("internal: not a CUDA buffer"))?;
            let n = b.len();
            slices.push((cuda.acc_f32(b)?, n));
        }
        // One collective per buffer, queued on the backend's stream in the same order on every rank.
        for (s, n) in slices.iter_mut() {
            let (ptr, _sync) = s.device_ptr_mut(&stream);
            let p = ptr as *mut c_void;
            // SAFETY: `p` holds `n` f32 on this rank's device; in place is allowed.
            let r = unsafe { (api.ncclAllReduce)(p, p, *n, nccl::FLOAT32, nccl::SUM, self.comm.raw(), stream.cu_stream() as *mut c_void) };
            self.comm.check("all-reduce", r)?;
        }
        self.finish(cuda, "all-reduce of the gradients")
    }

    fn sum_host(&self, be: &B, vals: &mut [f32]) -> Result<()> {
        let cuda = cuda_of(be)?;
        let mut buf = cuda.upload_f32(vals)?;
        self.all_reduce_sum(be, std::slice::from_mut((&mut buf as &mut dyn Any).downcast_mut::<B::Buf>().expect("CUDA buffer")))?;
        vals.copy_from_slice(&cuda.download(&buf)?);
        Ok(())
    }
}
