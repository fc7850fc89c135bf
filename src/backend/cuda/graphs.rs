//! Recorded steps (CUDA graphs) and the in-place copies that feed them new inputs.
//!
//! A sampling step at batch 1 is ~150 small launches; replaying them as one graph removes the
//! per-launch host cost that otherwise bounds it (docs/gpu.md §3, §5). The model records
//! a step once per shape, after one direct run has settled every buffer's storage, and replays it
//! after writing the step's inputs in place with `write_ints`.

use super::buffer::{CudaBuf, CudaIBuf, Store};
use super::CudaBackend;
use anyhow::{bail, Context, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode, CUstreamCaptureStatus};
use cudarc::driver::CudaGraph;
use std::sync::atomic::Ordering;

/// The recordings, by id; `None` once released.
#[derive(Default)]
pub struct Graphs(Vec<Option<CudaGraph>>);

// SAFETY: a CudaGraph is only touched through `CudaBackend::graphs`' mutex, never concurrently.
unsafe impl Send for Graphs {}

impl CudaBackend {
    /// Whether steps may be recorded: not while every launch is followed by a synchronisation
    /// (`DLM_CUDA_SYNC`), nor when `DLM_CUDA_GRAPHS=0` asks to run every op directly.
    pub fn graphs_enabled(&self) -> bool {
        self.use_graphs && !self.sync_each_launch
    }

    pub(crate) fn begin_capture(&self) -> Result<bool> {
        if !self.graphs_enabled() {
            return Ok(false);
        }
        // Thread-local: a call from this thread that is illegal during capture (an allocation that
        // synchronises, a blocking copy) fails the capture instead of running unrecorded.
        self.stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).context("beginning a CUDA graph capture")?;
        self.capturing.store(true, Ordering::Relaxed);
        Ok(true)
    }

    /// Ends the capture, also after a failure inside it, and leaves the stream usable.
    pub(crate) fn end_capture(&self) -> Result<usize> {
        // An op refused during the capture invalidates it, and the frees that follow (drops of
        // temporaries) record their errors in the context; cudarc's end_capture would return that
        // stale error before ending the capture, leaving the stream capturing. Nothing has run on
        // the device during a capture, so these errors only concern the capture: clear them.
        let stale = self.ctx.check_err();
        let ended = self.stream.end_capture(CUgraphInstantiate_flags(0));
        self.capturing.store(false, Ordering::Relaxed);
        let _ = self.ctx.check_err();
        let status = self.stream.capture_status().context("querying the stream's capture status")?;
        if status != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
            bail!("the CUDA stream is still capturing after ending the capture ({status:?})");
        }
        let graph = ended.with_context(|| match stale {
            Err(e) => format!("ending a CUDA graph capture (an op inside it failed: {e})"),
            Ok(()) => "ending a CUDA graph capture".into(),
        })?;
        let Some(graph) = graph else { bail!("the CUDA graph capture recorded nothing") };
        graph.upload().context("uploading a CUDA graph")?;
        let mut g = self.graphs.lock().map_err(|_| anyhow::anyhow!("CUDA graph table poisoned"))?;
        g.0.push(Some(graph));
        Ok(g.0.len() - 1)
    }

    pub(crate) fn replay(&self, id: usize) -> Result<()> {
        let g = self.graphs.lock().map_err(|_| anyhow::anyhow!("CUDA graph table poisoned"))?;
        match g.0.get(id) {
            Some(Some(graph)) => graph.launch().with_context(|| format!("replaying CUDA graph {id}")),
            _ => bail!("CUDA graph {id} does not exist"),
        }
    }

    pub(crate) fn release(&self, id: usize) -> Result<()> {
        let mut g = self.graphs.lock().map_err(|_| anyhow::anyhow!("CUDA graph table poisoned"))?;
        if let Some(slot) = g.0.get_mut(id) {
            *slot = None;
        }
        Ok(())
    }

    /// Copies `data` into an existing integer buffer of the same length (device and host copy).
    pub(crate) fn write_i32(&self, dst: &mut CudaIBuf, data: &[i32]) -> Result<()> {
        if dst.len() != data.len() {
            bail!("write_i32: {} values into a buffer of {}", data.len(), dst.len());
        }
        if !data.is_empty() {
            self.stream.memcpy_htod(data, &mut dst.dev)?;
        }
        dst.host.copy_from_slice(data);
        Ok(())
    }

    /// Copies `data` into a buffer of the same length in its current storage (bf16 rounds; f32
    /// and master weights keep every bit), without reallocating it.
    pub(crate) fn write_f32(&self, dst: &mut CudaBuf, data: &[f32]) -> Result<()> {
        if dst.len != data.len() {
            bail!("write_f32: {} values into a buffer of {}", data.len(), dst.len);
        }
        if data.is_empty() {
            return Ok(());
        }
        let halves = || data.iter().map(|&v| half::bf16::from_f32(v)).collect::<Vec<_>>();
        match &mut dst.store {
            Store::F32(s) => self.stream.memcpy_htod(data, s)?,
            Store::Bf16(s) => self.stream.memcpy_htod(&halves(), s)?,
            Store::Master { master, shadow } => {
                self.stream.memcpy_htod(data, master)?;
                self.stream.memcpy_htod(&halves(), shadow)?;
            }
        }
        Ok(())
    }

    /// The device values of an integer buffer (which a kernel may have written since the host
    /// copy was made).
    pub(crate) fn read_i32(&self, src: &CudaIBuf) -> Result<Vec<i32>> {
        let mut out = vec![0i32; src.len()];
        if !out.is_empty() {
            self.to_host(&src.dev.slice(0..out.len()), &mut out)?;
        }
        Ok(out)
    }
}
