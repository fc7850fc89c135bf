//! The collectives data-parallel training needs, over any backend: nothing to do for one process
//! (`Solo`), NCCL on the CUDA backend's stream for several (`NcclCollective`), and on a stream of
//! its own for the gradient buckets summed while the backward pass goes on.

use super::nccl::{self, Comm, UniqueId};
use crate::backend::cuda::{CudaBackend, CudaBuf};
use crate::backend::Backend;
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use half::bf16;
use std::any::Any;
use std::ffi::{c_int, c_void};
use std::ops::Range;
use std::sync::Arc;

/// Elements of each rank's shard that one ZeRO-1 reduce-scatter or all-gather moves: the flat
/// gradient and parameter vectors go through a staging buffer of `world` times this many elements
/// instead of being laid out whole (an XXL model's flat f32 gradient alone is 43 GB).
/// `DLM_ZERO_CHUNK` (elements) overrides it; the result does not depend on it.
pub const ZERO_CHUNK: usize = 1 << 22;

fn zero_chunk() -> Result<usize> {
    match std::env::var("DLM_ZERO_CHUNK") {
        Err(_) => Ok(ZERO_CHUNK),
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| anyhow!("DLM_ZERO_CHUNK={v}: expected a number of elements, at least 1")),
    }
}

/// Where the pieces of chunk `[k0, k0 + cnt)` of every rank's shard (of `n` elements) come from:
/// rank r's part is the flat range `[r·n + k0, r·n + k0 + cnt)` and sits at `r·cnt` in the
/// staging buffer, as NCCL lays out a reduce-scatter's input and an all-gather's output. Each
/// piece is (part, its range inside that part, its offset in the staging buffer); `lens` are the
/// parts' lengths, laid end to end (the padding after them has no part).
fn chunk_pieces(lens: &[usize], n: usize, world: usize, k0: usize, cnt: usize) -> Vec<(usize, Range<usize>, usize)> {
    let mut out = Vec::new();
    for r in 0..world {
        let (a, b) = (r * n + k0, r * n + k0 + cnt);
        let mut off = 0;
        for (i, &len) in lens.iter().enumerate() {
            let (s, e) = (a.max(off), b.min(off + len));
            if s < e {
                out.push((i, s - off..e - off, r * cnt + s - a));
            }
            off += len;
        }
    }
    out
}

/// Sums over the ranks. Every rank ends with the same bits (NCCL reduces in one order for all).
pub trait Collective<B: Backend> {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Sums each buffer over the ranks, in place, as f32.
    fn all_reduce_sum(&self, be: &B, bufs: &mut [B::Buf]) -> Result<()>;
    /// Starts summing `bufs[i]` for each i of `bucket` over the ranks (in place, as f32) after the
    /// work queued so far, without waiting for it: the backward pass goes on meanwhile. The
    /// buffers must not be touched again before `finish_buckets`. Every rank must start the same
    /// buckets in the same order.
    fn all_reduce_bucket(&self, be: &B, bufs: &mut [B::Buf], bucket: &[usize]) -> Result<()>;
    /// Makes the work queued after it wait for every bucket started, and reports their failures.
    fn finish_buckets(&self, be: &B) -> Result<()>;
    /// Sums host numbers over the ranks (in f64: losses, token counts, squared norms).
    fn sum_host(&self, be: &B, vals: &mut [f64]) -> Result<()>;
    /// ZeRO-1: sums `parts` (flattened in order, padded to `world · shard.len()`) over the ranks
    /// and leaves this rank's part of the sum in `shard` (f32).
    fn reduce_scatter_sum(&self, be: &B, parts: &mut [B::Buf], shard: &mut B::Buf) -> Result<()>;
    /// ZeRO-1: gathers every rank's `shard` (f32) of the flattened parameters and writes each
    /// parameter of `params`: with `masters`, as f32 masters with their bf16 copies (for a
    /// checkpoint); else as the bf16 values alone that the forward reads (gathered as bf16, and
    /// the parameters' own f32 masters are dropped).
    fn all_gather_params(&self, be: &B, shard: &B::Buf, params: &mut [B::Buf], masters: bool) -> Result<()>;
    /// ZeRO-1: every rank's `shard`, concatenated, on the host (for checkpoints).
    fn all_gather_host(&self, be: &B, shard: &B::Buf) -> Result<Vec<f32>>;
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
    fn all_reduce_bucket(&self, _be: &B, _bufs: &mut [B::Buf], _bucket: &[usize]) -> Result<()> {
        Ok(())
    }
    fn finish_buckets(&self, _be: &B) -> Result<()> {
        Ok(())
    }
    fn sum_host(&self, _be: &B, _vals: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn reduce_scatter_sum(&self, _be: &B, _parts: &mut [B::Buf], _shard: &mut B::Buf) -> Result<()> {
        bail!("internal: ZeRO shards the optimizer over several ranks, and this process is alone")
    }
    fn all_gather_params(&self, _be: &B, _shard: &B::Buf, _params: &mut [B::Buf], _masters: bool) -> Result<()> {
        bail!("internal: ZeRO shards the optimizer over several ranks, and this process is alone")
    }
    fn all_gather_host(&self, _be: &B, _shard: &B::Buf) -> Result<Vec<f32>> {
        bail!("internal: ZeRO shards the optimizer over several ranks, and this process is alone")
    }
}

/// NCCL on the CUDA backend's stream, and the gradient buckets on a stream of their own.
pub struct NcclCollective {
    /// Declared first, so dropped first: destroying the stream lets its queued collectives finish
    /// while the communicator is still there.
    buckets: Arc<CudaStream>,
    comm: Comm,
    /// Elements per rank moved by one ZeRO-1 collective (`ZERO_CHUNK`).
    chunk: usize,
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
    let buckets = cuda.stream().context().new_stream().context("creating the CUDA stream for the gradient sums")?;
    Ok(Box::new(NcclCollective { buckets, comm: Comm::init(rank, world, id)?, chunk: zero_chunk()? }))
}

fn cuda_buf<B: Backend>(b: &B::Buf) -> Result<&CudaBuf> {
    (b as &dyn Any).downcast_ref::<CudaBuf>().ok_or_else(|| anyhow!("internal: not a CUDA buffer"))
}

fn cuda_buf_mut<B: Backend>(b: &mut B::Buf) -> Result<&mut CudaBuf> {
    (b as &mut dyn Any).downcast_mut::<CudaBuf>().ok_or_else(|| anyhow!("internal: not a CUDA buffer"))
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

impl NcclCollective {
    fn stream_ptr(be: &CudaBackend) -> *mut c_void {
        be.stream().cu_stream() as *mut c_void
    }

    /// Launches, on `on`, one NCCL group of in-place f32 sums of the buffers `bufs[i]` with
    /// `keep(i)`, in index order (the same on every rank). Each buffer becomes f32 storage first,
    /// on the backend's stream and outside the group (a conversion launches a kernel); another
    /// stream first waits for everything queued on the backend's so far.
    fn launch_all_reduce<B: Backend>(
        &self,
        cuda: &CudaBackend,
        bufs: &mut [B::Buf],
        keep: impl Fn(usize) -> bool,
        on: &Arc<CudaStream>,
    ) -> Result<()> {
        let mut slices = Vec::with_capacity(bufs.len());
        for (_, b) in bufs.iter_mut().enumerate().filter(|(i, _)| keep(*i)) {
            let b = cuda_buf_mut::<B>(b)?;
            let n = b.len();
            slices.push((cuda.acc_f32(b)?, n));
        }
        if !Arc::ptr_eq(on, cuda.stream()) {
            on.join(cuda.stream())
                .with_context(|| format!("rank {}: ordering the gradient sums after the backward pass", self.comm.rank))?;
        }
        let api = self.comm.api();
        let raw = on.cu_stream() as *mut c_void;
        self.comm.group(|| {
            for (s, n) in slices.iter_mut() {
                let (ptr, _sync) = s.device_ptr_mut(on);
                let p = ptr as *mut c_void;
                // SAFETY: `p` holds `n` f32 on this rank's device; in place is allowed.
                let r = unsafe { (api.ncclAllReduce)(p, p, *n, nccl::FLOAT32, nccl::SUM, self.comm.raw(), raw) };
                self.comm.check("all-reduce", r)?;
            }
            Ok(())
        })
    }

    /// All-gathers the first `n` elements of `src` (NCCL type `dtype`) into a new flat buffer of
    /// `world · n`.
    fn gather_slice<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        cuda: &CudaBackend,
        src: &CudaSlice<T>,
        n: usize,
        dtype: c_int,
    ) -> Result<CudaSlice<T>> {
        let stream = cuda.stream().clone();
        let mut flat = cuda.alloc_zeros::<T>(n * self.comm.world)?;
        {
            let (s, _a) = src.device_ptr(&stream);
            let (d, _b) = flat.device_ptr_mut(&stream);
            // SAFETY: `s` holds n elements, `d` world·n, both on this rank's device.
            let r = unsafe {
                (self.comm.api().ncclAllGather)(s as *const c_void, d as *mut c_void, n, dtype, self.comm.raw(), Self::stream_ptr(cuda))
            };
            self.comm.check("all-gather", r)?;
        }
        self.finish(cuda, "all-gather of the shards")?;
        Ok(flat)
    }

    /// All-gathers `cnt` elements of every rank's `src` into the first `world · cnt` of
    /// `staging` (queued; the caller synchronises).
    fn gather_chunk<T: DeviceRepr, S: DevicePtr<T>>(
        &self,
        cuda: &CudaBackend,
        src: &S,
        staging: &mut CudaSlice<T>,
        cnt: usize,
        dtype: c_int,
    ) -> Result<()> {
        let stream = cuda.stream().clone();
        let (s, _a) = src.device_ptr(&stream);
        let (d, _b) = staging.device_ptr_mut(&stream);
        // SAFETY: `s` holds cnt elements, `d` at least world·cnt, both on this rank's device.
        let r = unsafe {
            (self.comm.api().ncclAllGather)(s as *const c_void, d as *mut c_void, cnt, dtype, self.comm.raw(), Self::stream_ptr(cuda))
        };
        self.comm.check("all-gather", r)
    }

    /// All-gathers `shard` as f32.
    fn gather_flat(&self, cuda: &CudaBackend, shard: &CudaBuf) -> Result<CudaSlice<f32>> {
        self.gather_slice(cuda, cuda.as_f32(shard)?.get(), shard.len(), nccl::FLOAT32)
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
        self.launch_all_reduce::<B>(cuda, bufs, |_| true, cuda.stream())?;
        self.finish(cuda, "all-reduce of the gradients")
    }

    fn all_reduce_bucket(&self, be: &B, bufs: &mut [B::Buf], bucket: &[usize]) -> Result<()> {
        let cuda = cuda_of(be)?;
        if let Some(&bad) = bucket.iter().find(|&&i| i >= bufs.len()) {
            bail!("internal: bucket names buffer {bad} of {}", bufs.len());
        }
        let mut members = vec![false; bufs.len()];
        bucket.iter().for_each(|&i| members[i] = true);
        self.launch_all_reduce::<B>(cuda, bufs, |i| members[i], &self.buckets)
    }

    fn finish_buckets(&self, be: &B) -> Result<()> {
        let cuda = cuda_of(be)?;
        // Everything queued on the backend's stream from now on (clipping, the optimizer, the next
        // step's zeroing) runs after the sums.
        cuda.stream().join(&self.buckets).with_context(|| format!("rank {}: waiting for the gradient buckets", self.comm.rank))?;
        self.finish(cuda, "all-reduce of the gradient buckets")
    }

    fn reduce_scatter_sum(&self, be: &B, parts: &mut [B::Buf], shard: &mut B::Buf) -> Result<()> {
        let cuda = cuda_of(be)?;
        let stream = cuda.stream().clone();
        let world = self.comm.world;
        let shard = cuda_buf_mut::<B>(shard)?;
        let n = shard.len();
        let mut srcs = Vec::with_capacity(parts.len());
        for p in parts.iter_mut() {
            srcs.push(cuda.acc_f32(cuda_buf_mut::<B>(p)?)?);
        }
        let lens: Vec<usize> = srcs.iter().map(|s| s.len()).collect();
        if lens.iter().sum::<usize>() > n * world {
            bail!("internal: {} gradient elements do not fit {world} shards of {n}", lens.iter().sum::<usize>());
        }
        let dst = cuda.acc_f32(shard)?;
        let c = self.chunk.min(n).max(1);
        let mut staging = cuda.alloc_zeros::<f32>(c * world)?;
        for k0 in (0..n).step_by(c) {
            let cnt = c.min(n - k0);
            // Zeros where the flat vector is padding.
            stream.memset_zeros(&mut staging)?;
            for (i, range, at) in chunk_pieces(&lens, n, world, k0, cnt) {
                let len = range.len();
                stream.memcpy_dtod(&srcs[i].slice(range), &mut staging.slice_mut(at..at + len))?;
            }
            let (s, _a) = staging.device_ptr(&stream);
            let mut out = dst.slice_mut(k0..k0 + cnt);
            let (d, _b) = out.device_ptr_mut(&stream);
            // SAFETY: `s` holds world·cnt f32, `d` cnt, both on this rank's device.
            let r = unsafe {
                (self.comm.api().ncclReduceScatter)(
                    s as *const c_void,
                    d as *mut c_void,
                    cnt,
                    nccl::FLOAT32,
                    nccl::SUM,
                    self.comm.raw(),
                    Self::stream_ptr(cuda),
                )
            };
            self.comm.check("reduce-scatter", r)?;
        }
        self.finish(cuda, "reduce-scatter of the gradients")
    }

    fn all_gather_params(&self, be: &B, shard: &B::Buf, params: &mut [B::Buf], masters: bool) -> Result<()> {
        let cuda = cuda_of(be)?;
        let stream = cuda.stream().clone();
        let world = self.comm.world;
        let shard = cuda_buf::<B>(shard)?;
        let n = shard.len();
        let mut bufs = Vec::with_capacity(params.len());
        for p in params.iter_mut() {
            bufs.push(cuda_buf_mut::<B>(p)?);
        }
        let lens: Vec<usize> = bufs.iter().map(|b| b.len()).collect();
        if lens.iter().sum::<usize>() > n * world {
            bail!("internal: {} parameter elements do not fit the gathered {}", lens.iter().sum::<usize>(), n * world);
        }
        let c = self.chunk.min(n).max(1);
        if masters {
            // For a checkpoint: the f32 masters, then their bf16 copies.
            let mut outs = Vec::with_capacity(bufs.len());
            for b in bufs {
                outs.push(cuda.as_master(b)?);
            }
            let src = cuda.as_f32(shard)?;
            let mut staging = cuda.alloc_zeros::<f32>(c * world)?;
            for k0 in (0..n).step_by(c) {
                let cnt = c.min(n - k0);
                self.gather_chunk(cuda, &src.get().slice(k0..k0 + cnt), &mut staging, cnt, nccl::FLOAT32)?;
                for (i, range, at) in chunk_pieces(&lens, n, world, k0, cnt) {
                    let len = range.len();
                    stream.memcpy_dtod(&staging.slice(at..at + len), &mut outs[i].0.slice_mut(range))?;
                }
            }
            for ((master, shadow), &len) in outs.iter_mut().zip(&lens) {
                cuda.convert_to_bf16(master, shadow, len)?;
            }
        } else {
            // The same rounding as the AdamW kernel's bf16 copy, so the forward reads the same bits.
            let mut half = cuda.alloc_zeros::<bf16>(n)?;
            cuda.convert_to_bf16(cuda.as_f32(shard)?.get(), &mut half, n)?;
            let mut outs = Vec::with_capacity(bufs.len());
            for b in bufs {
                outs.push(cuda.out_bf16(b)?);
            }
            let mut staging = cuda.alloc_zeros::<bf16>(c * world)?;
            for k0 in (0..n).step_by(c) {
                let cnt = c.min(n - k0);
                self.gather_chunk(cuda, &half.slice(k0..k0 + cnt), &mut staging, cnt, nccl::BFLOAT16)?;
                for (i, range, at) in chunk_pieces(&lens, n, world, k0, cnt) {
                    let len = range.len();
                    stream.memcpy_dtod(&staging.slice(at..at + len), &mut outs[i].slice_mut(range))?;
                }
            }
        }
        self.finish(cuda, "all-gather of the shards")
    }

    fn all_gather_host(&self, be: &B, shard: &B::Buf) -> Result<Vec<f32>> {
        let cuda = cuda_of(be)?;
        let flat = self.gather_flat(cuda, cuda_buf::<B>(shard)?)?;
        let mut host = vec![0.0f32; flat.len()];
        cuda.to_host(&flat, &mut host)?;
        Ok(host)
    }

    fn sum_host(&self, be: &B, vals: &mut [f64]) -> Result<()> {
        let cuda = cuda_of(be)?;
        let stream = cuda.stream().clone();
        let mut dev = stream.clone_htod(vals)?;
        {
            let (p, _sync) = dev.device_ptr_mut(&stream);
            let p = p as *mut c_void;
            // SAFETY: `p` holds vals.len() f64 on this rank's device; in place is allowed.
            let r = unsafe {
                (self.comm.api().ncclAllReduce)(p, p, vals.len(), nccl::FLOAT64, nccl::SUM, self.comm.raw(), Self::stream_ptr(cuda))
            };
            self.comm.check("all-reduce", r)?;
        }
        self.finish(cuda, "all-reduce of the step's loss and counts")?;
        cuda.to_host(&dev, vals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The staging pieces of every chunk, laid side by side, are NCCL's flat layout: rank r's
    /// part of chunk k is flat[r·n + k0 ..], whatever the chunk size.
    #[test]
    fn chunk_pieces_cover_the_flat_vector_as_laid_out_whole() {
        let lens = [5usize, 1, 7, 3];
        let total: usize = lens.iter().sum();
        for world in 1..5 {
            let n = total.div_ceil(world);
            for c in 1..=n + 1 {
                for k0 in (0..n).step_by(c) {
                    let cnt = c.min(n - k0);
                    let mut staging = vec![usize::MAX; world * cnt];
                    for (i, range, at) in chunk_pieces(&lens, n, world, k0, cnt) {
                        let start: usize = lens[..i].iter().sum();
                        for (j, e) in range.enumerate() {
                            staging[at + j] = start + e;
                        }
                    }
                    for r in 0..world {
                        for j in 0..cnt {
                            let flat = r * n + k0 + j;
                            let want = if flat < total { flat } else { usize::MAX };
                            assert_eq!(staging[r * cnt + j], want, "world {world}, chunk {c}, k0 {k0}, rank {r}");
                        }
                    }
                }
            }
        }
    }
}
