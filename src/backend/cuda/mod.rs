//! The CUDA backend: cudarc (libcuda, cuBLASLt and NVRTC loaded at run time, nothing linked),
//! bf16 storage with f32 accumulation and f32 statistics, cuBLASLt for every GEMM and the
//! hand-written kernels of `kernels/*.cu`.
//!
//! - `kernels`: loading the embedded fatbins (or NVRTC) and the kernel table;
//! - `buffer`: `CudaBuf` / `CudaIBuf` and the storage-type rules;
//! - `blas`: cuBLASLt plans;
//! - one file per kernel family, named as its `kernels/<family>.cu` and its CPU twin
//!   `cpu/<family>.rs` (`linear` runs on cuBLASLt): the op bodies.
//!
//! All work goes to one non-default stream (CUDA-graph capture needs that) with cudarc's per-slice
//! event tracking off: with a single stream every op is already ordered.

pub mod blas;
pub mod buffer;
mod graphs;
pub mod kernels;

/// Launches kernel `$name` with `$cfg` and the listed arguments, then runs the optional
/// per-launch synchronisation (see `CudaBackend::set_sync_each_launch`).
macro_rules! launch {
    ($self:expr, $name:expr, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        use cudarc::driver::PushKernelArg as _;
        let name: &str = $name;
        let f = $self.kernels.get(name)?;
        let mut b = $self.stream.launch_builder(f);
        $( b.arg($arg); )*
        unsafe { b.launch($cfg) }.map_err(|e| anyhow::anyhow!("launching CUDA kernel {name}: {e}"))?;
        $self.after_launch(name)
    }};
}

mod adamw;
mod attention;
mod elementwise;
mod embed;
mod layernorm;
mod linear;
mod noise;
mod pool;
mod rows;
mod sampler;
mod vocab;

pub use buffer::{CudaBuf, CudaIBuf};
pub use kernels::KernelSource;

use super::{Activation, AdamW, Backend, ConfidenceKind, Dropout, NoiseSpec, PoolShape, ReparamRule};
use crate::backend::{AdamWStep, CanvasInputs, CanvasState, LossSlots, Moments, Picks, PicksMut, VocabShape};
use crate::backend::{AttnCall, AttnSaved, Qkv, QkvGrads};
use crate::backend::{EmbedGrads, EmbedShape, EmbedTables, Gemm, LinearGrads, LnGrads, LnParams, LnSaved, LnStats, Residual, RowsShape};
use anyhow::{bail, Context, Result};
use cudarc::driver::{CudaContext, CudaStream, LaunchConfig};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: kernels::Kernels,
    blas: blas::Gemm,
    scratch: Mutex<sampler::Scratch>,
    sync_each_launch: bool,
    use_graphs: bool,
    graphs: Mutex<graphs::Graphs>,
    /// Set between `capture_begin` and `capture_end`: a buffer must not change its storage then
    /// (the new allocation would belong to the graph, not to the buffer).
    capturing: AtomicBool,
    label: String,
}

/// What the test suite's software CUDA device (tests/swdev) puts in its device name, and so in
/// `Backend::name`: its timings are those of a CPU emulation.
pub const SOFTWARE_DEVICE_MARK: &str = "software device";

/// Why there is no usable GPU, or `None` when `CudaBackend::new(0)` can be tried.
pub fn unavailable_reason() -> Option<String> {
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("no CUDA driver (libcuda.so was not found)".into());
    }
    match CudaContext::device_count() {
        Ok(0) => Some("the CUDA driver reports no GPU".into()),
        Ok(_) => None,
        Err(e) => Some(format!("the CUDA driver reports no usable GPU ({e})")),
    }
}

impl CudaBackend {
    /// Opens GPU `ordinal`. Returns an error (never panics) without a driver, without a GPU, or when
    /// the kernels can neither be loaded from the build's fatbins nor compiled with NVRTC.
    pub fn new(ordinal: usize) -> Result<Self> {
        if let Some(why) = unavailable_reason() {
            bail!("the CUDA backend cannot start: {why}");
        }
        let count = CudaContext::device_count()? as usize;
        if ordinal >= count {
            bail!("CUDA device {ordinal} does not exist ({count} GPU(s) present)");
        }
        let ctx = CudaContext::new(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))?;
        // SAFETY: called before this backend allocates anything; all its work is on one stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        // Best effort: a device without memory pools allocates synchronously anyway.
        let _ = keep_freed_memory(&ctx);
        let (major, minor) = ctx.compute_capability()?;
        let kernels = kernels::Kernels::load(&ctx)?;
        attention::allow_attention_smem(&ctx, &kernels)?;
        let blas = blas::Gemm::new(&stream, major)?;
        let scratch = Mutex::new(sampler::Scratch::new(&stream)?);
        let label = format!(
            "cuda:{ordinal} ({}, sm_{major}{minor}, kernels {})",
            ctx.name().unwrap_or_else(|_| "unknown GPU".into()),
            match kernels.source {
                KernelSource::Fatbin => "fatbin",
                KernelSource::Nvrtc => "nvrtc",
                KernelSource::Mixed => "fatbin+nvrtc",
            }
        );
        let sync_each_launch = std::env::var_os("DLM_CUDA_SYNC").is_some_and(|v| v != "0");
        let use_graphs = std::env::var_os("DLM_CUDA_GRAPHS").is_none_or(|v| v != "0");
        Ok(CudaBackend {
            ctx,
            stream,
            kernels,
            blas,
            scratch,
            sync_each_launch,
            use_graphs,
            graphs: Mutex::default(),
            capturing: AtomicBool::new(false),
            label,
        })
    }

    /// Synchronise after every kernel, so an asynchronous fault is reported with the name of the
    /// kernel that caused it (slow; the parity tests and `DLM_CUDA_SYNC=1` turn it on).
    pub fn set_sync_each_launch(&mut self, on: bool) {
        self.sync_each_launch = on;
    }

    /// Record sampling steps as CUDA graphs (the default unless `DLM_CUDA_GRAPHS=0`).
    pub fn set_graphs(&mut self, on: bool) {
        self.use_graphs = on;
    }

    /// Waits for all queued work and reports any asynchronous error.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().context("CUDA stream synchronisation")?;
        self.ctx.check_err().context("CUDA deferred error")?;
        Ok(())
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn kernel_source(&self) -> KernelSource {
        self.kernels.source
    }

    fn after_launch(&self, name: &str) -> Result<()> {
        if self.sync_each_launch {
            self.stream.synchronize().with_context(|| format!("CUDA kernel {name} failed"))?;
        }
        Ok(())
    }
}

impl Drop for CudaBackend {
    /// Queued work (a decode queues steps without waiting) may still use the graphs, the kernel
    /// modules and the cuBLASLt handle, which the fields' drops release: wait for it first, and
    /// destroy the graphs before the modules they launch.
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        if let Ok(mut g) = self.graphs.lock() {
            *g = graphs::Graphs::default();
        }
    }
}

/// Buffers come from the device's default stream-ordered pool (cuMemAllocAsync). By default the
/// pool hands freed memory back to the driver at every synchronisation, so a training step, which
/// frees its ~1 GB of logits and synchronises to read the loss, would map that memory again on
/// the next step; keeping it in the pool makes the per-step buffers cheap, as PyTorch's caching
/// allocator does.
fn keep_freed_memory(ctx: &CudaContext) -> Result<()> {
    use cudarc::driver::sys;
    ctx.bind_to_thread()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut keep = u64::MAX;
    // SAFETY: plain driver calls on this context's device with valid out-pointers.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result().context("getting the device's memory pool")?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut keep as *mut u64 as *mut std::ffi::c_void,
        )
        .result()
        .context("setting the memory pool's release threshold")?;
    }
    Ok(())
}

/// A grid-stride launch over `n` elements: 256 threads a block, at most 65536 blocks.
pub(crate) fn cfg_1d(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 1 << 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// One block per row with `threads` threads (a multiple of 32) and `smem` bytes of dynamic shared memory.
pub(crate) fn cfg_rows(rows: usize, threads: u32, smem: u32) -> Result<LaunchConfig> {
    // The block reductions shuffle with a full warp mask: a partial warp would be undefined.
    debug_assert!(threads.is_multiple_of(32) && (32..=1024).contains(&threads), "{threads} threads per block");
    if rows > i32::MAX as usize {
        bail!("{rows} rows is more than one launch can cover");
    }
    Ok(LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: smem })
}

/// Threads for a row of `cols`: enough warps to cover it, between 32 and `max`.
pub(crate) fn threads_for(cols: usize, max: u32) -> u32 {
    (cols.div_ceil(32) * 32).clamp(32, max as usize) as u32
}

pub(crate) fn to_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow::anyhow!("{what} = {v} does not fit the kernels' 32-bit sizes"))
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type IBuf = CudaIBuf;

    fn name(&self) -> String {
        self.label.clone()
    }

    fn vocab_align(&self) -> usize {
        64
    }

    fn zeros(&self, n: usize) -> Result<CudaBuf> {
        self.new_bf16(n)
    }
    fn upload(&self, data: &[f32]) -> Result<CudaBuf> {
        self.upload(data)
    }
    fn download(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        self.download(buf)
    }
    fn synchronize(&self) -> Result<()> {
        CudaBackend::synchronize(self)
    }
    fn upload_i32(&self, data: &[i32]) -> Result<CudaIBuf> {
        self.upload_i32(data)
    }
    fn write_f32(&self, dst: &mut CudaBuf, data: &[f32]) -> Result<()> {
        self.write_f32(dst, data)
    }
    fn write_i32(&self, dst: &mut CudaIBuf, data: &[i32]) -> Result<()> {
        self.write_i32(dst, data)
    }
    fn read_i32(&self, src: &CudaIBuf) -> Result<Vec<i32>> {
        self.read_i32(src)
    }
    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len
    }
    fn fill_zero(&self, buf: &mut CudaBuf) -> Result<()> {
        self.fill_zero(buf)
    }
    fn copy(&self, src: &CudaBuf, dst: &mut CudaBuf) -> Result<()> {
        self.copy(src, dst)
    }
    fn add_assign(&self, dst: &mut CudaBuf, src: &CudaBuf) -> Result<()> {
        self.add_assign(dst, src)
    }

    fn linear_fwd(&self, x: &Self::Buf, w: &Self::Buf, bias: Option<&Self::Buf>, y: &mut Self::Buf, dims: Gemm) -> Result<()> {
        self.linear_fwd(x, w, bias, y, dims)
    }

    fn linear_bwd(&self, x: &Self::Buf, w: &Self::Buf, dy: &Self::Buf, grads: LinearGrads<'_, Self::Buf>, dims: Gemm) -> Result<()> {
        self.linear_bwd(x, w, dy, grads, dims)
    }

    fn upload_f32(&self, data: &[f32]) -> Result<CudaBuf> {
        // The inherent method: f32 storage, which AdamW turns into master + bf16 copy.
        CudaBackend::upload_f32(self, data)
    }
    fn upload_master(&self, data: &[f32]) -> Result<CudaBuf> {
        CudaBackend::upload_master(self, data)
    }

    fn embed_fwd(
        &self,
        ids: &Self::IBuf,
        pos_ids: &Self::IBuf,
        tables: EmbedTables<'_, Self::Buf>,
        out: &mut Self::Buf,
        shape: EmbedShape,
    ) -> Result<()> {
        self.embed_fwd(ids, pos_ids, tables, out, shape)
    }

    fn embed_bwd(
        &self,
        ids: &Self::IBuf,
        pos_ids: &Self::IBuf,
        dout: &Self::Buf,
        grads: EmbedGrads<'_, Self::Buf>,
        shape: EmbedShape,
        padding_idx: i32,
    ) -> Result<()> {
        self.embed_bwd(ids, pos_ids, dout, grads, shape, padding_idx)
    }

    fn dropout_fwd(&self, x: &mut CudaBuf, drop: Dropout, stream: u64) -> Result<()> {
        self.dropout(x, drop, stream)
    }
    fn dropout_bwd(&self, dx: &mut CudaBuf, drop: Dropout, stream: u64) -> Result<()> {
        self.dropout(dx, drop, stream)
    }
    fn gelu_fwd(&self, x: &CudaBuf, y: &mut CudaBuf) -> Result<()> {
        self.gelu_fwd(x, y)
    }
    fn gelu_bwd(&self, x: &CudaBuf, dy: &CudaBuf, dx: &mut CudaBuf) -> Result<()> {
        self.gelu_bwd(x, dy, dx)
    }
    fn activation_fwd(&self, act: Activation, x: &CudaBuf, y: &mut CudaBuf) -> Result<()> {
        self.activation_fwd(act, x, y)
    }
    fn activation_bwd(&self, act: Activation, saved: &CudaBuf, dy: &CudaBuf, dx: &mut CudaBuf) -> Result<()> {
        self.activation_bwd(act, saved, dy, dx)
    }
    fn mean_pool_fwd(&self, x: &CudaBuf, key_mask: &CudaIBuf, out: &mut CudaBuf, shape: PoolShape) -> Result<()> {
        self.mean_pool_fwd(x, key_mask, out, shape)
    }
    fn mean_pool_bwd(&self, dout: &CudaBuf, key_mask: &CudaIBuf, dx: &mut CudaBuf, shape: PoolShape) -> Result<()> {
        self.mean_pool_bwd(dout, key_mask, dx, shape)
    }

    fn add_layernorm_fwd(
        &self,
        x: &Self::Buf,
        residual: Option<Residual<'_, Self::Buf>>,
        params: LnParams<'_, Self::Buf>,
        out: &mut Self::Buf,
        stats: LnStats<'_, Self::Buf>,
        shape: RowsShape,
    ) -> Result<()> {
        self.add_layernorm_fwd(x, residual, params, out, stats, shape)
    }

    fn layernorm_bwd(
        &self,
        x: &Self::Buf,
        dout: &Self::Buf,
        saved: LnSaved<'_, Self::Buf>,
        grads: LnGrads<'_, Self::Buf>,
        shape: RowsShape,
    ) -> Result<()> {
        self.layernorm_bwd(x, dout, saved, grads, shape)
    }

    fn attention_fwd(
        &self,
        qkv: Qkv<'_, Self::Buf>,
        key_mask: &Self::IBuf,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        call: AttnCall,
    ) -> Result<()> {
        self.attention_fwd(qkv, key_mask, out, lse, call)
    }

    fn attention_bwd(
        &self,
        qkv: Qkv<'_, Self::Buf>,
        key_mask: &Self::IBuf,
        saved: AttnSaved<'_, Self::Buf>,
        dout: &Self::Buf,
        grads: QkvGrads<'_, Self::Buf>,
        call: AttnCall,
    ) -> Result<()> {
        self.attention_bwd(qkv, key_mask, saved, dout, grads, call)
    }

    fn gather_rows(&self, x: &CudaBuf, rows: &CudaIBuf, out: &mut CudaBuf, n_rows: usize, cols: usize) -> Result<()> {
        self.gather_rows(x, rows, out, n_rows, cols)
    }

    fn scatter_add_rows(&self, dout: &CudaBuf, rows: &CudaIBuf, dx: &mut CudaBuf, n_rows: usize, cols: usize) -> Result<()> {
        self.scatter_add_rows(dout, rows, dx, n_rows, cols)
    }

    fn scatter_rows(&self, x: &CudaBuf, rows: &CudaIBuf, out: &mut CudaBuf, n_rows: usize, cols: usize) -> Result<()> {
        self.scatter_rows(x, rows, out, n_rows, cols)
    }

    fn q_sample(
        &self,
        ids: &mut Self::IBuf,
        seq: usize,
        src_len: &[i32],
        spec: &NoiseSpec,
        out: LossSlots<'_, Self::Buf, Self::IBuf>,
    ) -> Result<usize> {
        self.q_sample(ids, seq, src_len, spec, out)
    }

    fn cross_entropy_fwd_bwd(
        &self,
        logits: &mut Self::Buf,
        targets: &Self::IBuf,
        weights: &[f32],
        shape: VocabShape,
        label_smoothing: f32,
    ) -> Result<Vec<f32>> {
        self.cross_entropy_fwd_bwd(logits, targets, weights, shape, label_smoothing)
    }

    fn vocab_pick(
        &self,
        logits: &Self::Buf,
        shape: VocabShape,
        forbid: &Self::IBuf,
        temperature: f32,
        gumbel: Option<(&Self::IBuf, &Self::IBuf)>,
        out: PicksMut<'_, Self::Buf, Self::IBuf>,
    ) -> Result<()> {
        self.vocab_pick(logits, shape, forbid, temperature, gumbel, out)
    }

    fn vocab_confidence(
        &self,
        logits: &CudaBuf,
        shape: VocabShape,
        forbid: &CudaIBuf,
        kind: ConfidenceKind,
        out: &mut CudaBuf,
    ) -> Result<()> {
        self.vocab_confidence(logits, shape, forbid, kind, out)
    }

    fn cfg_combine(&self, logits: &mut CudaBuf, shape: VocabShape, scale: f32) -> Result<()> {
        self.cfg_combine(logits, shape, scale)
    }

    fn reparam_step(
        &self,
        canvases: CanvasInputs<'_, Self::IBuf>,
        picks: Picks<'_, Self::Buf, Self::IBuf>,
        state: CanvasState<'_, Self::Buf, Self::IBuf>,
        ids: &mut Self::IBuf,
        rule: ReparamRule,
    ) -> Result<()> {
        self.reparam_step(canvases, picks, state, ids, rule)
    }

    fn begin_capture(&self) -> Result<bool> {
        self.begin_capture()
    }
    fn end_capture(&self) -> Result<usize> {
        self.end_capture()
    }
    fn replay(&self, graph: usize) -> Result<()> {
        self.replay(graph)
    }
    fn release(&self, graph: usize) -> Result<()> {
        self.release(graph)
    }

    fn sum_squares(&self, x: &CudaBuf) -> Result<f64> {
        self.sum_squares_all(&[x])
    }
    fn sum_squares_all(&self, xs: &[&CudaBuf]) -> Result<f64> {
        self.sum_squares_all(xs)
    }
    fn adamw(&self, param: &mut Self::Buf, grad: &Self::Buf, moments: Moments<'_, Self::Buf>, hp: AdamW, at: AdamWStep) -> Result<()> {
        self.adamw(param, grad, moments, hp, at)
    }
}

/// Opens CUDA device `ordinal` for `--device cuda[:N]`.
pub fn open(ordinal: usize) -> Result<CudaBackend> {
    CudaBackend::new(ordinal)
}

/// GPU `ordinal`'s name and total memory in bytes, as the driver reports them, without opening a
/// context (so nothing is allocated): what `train` checks its memory plan against.
pub fn device_memory(ordinal: usize) -> Result<(String, u64)> {
    use cudarc::driver::result::device;
    if let Some(why) = unavailable_reason() {
        bail!("the CUDA backend cannot start: {why}");
    }
    let count = CudaContext::device_count()? as usize;
    if ordinal >= count {
        bail!("CUDA device {ordinal} does not exist ({count} GPU(s) present)");
    }
    let dev = device::get(ordinal as i32).with_context(|| format!("CUDA device {ordinal}"))?;
    let name = device::get_name(dev).unwrap_or_else(|_| "unknown GPU".into());
    // SAFETY: `dev` is a valid device handle from `get`.
    let bytes = unsafe { device::total_mem(dev) }.with_context(|| format!("CUDA device {ordinal}: total memory"))?;
    Ok((format!("cuda:{ordinal} ({name})"), bytes as u64))
}
