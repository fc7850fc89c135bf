//! Device buffers and their storage type.
//!
//! A `CudaBuf` always stands for a vector of `len` numbers; the op that writes it decides how they
//! are stored:
//! - `Bf16`: activations, weights and their gradients flowing between layers (the default: `zeros`
//!   and `upload` make bf16);
//! - `F32`: statistics (mean, rstd, lse) and accumulators (parameter gradients, Adam moments). An op
//!   that accumulates into a bf16 buffer first converts it to f32, exactly;
//! - `Master`: a parameter after its first AdamW step: the f32 master copy plus the bf16 copy that
//!   forward ops read, both written by the AdamW kernel.
//!
//! Ops that only read take any storage (a temporary bf16 copy is made for the rare f32 operand).
//! Integer buffers keep their host copy, so indices are checked on the host before a launch.

use super::CudaBackend;
use anyhow::{bail, Result};
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, DeviceRepr};
use half::bf16;

pub enum Store {
    Bf16(CudaSlice<bf16>),
    F32(CudaSlice<f32>),
    Master { master: CudaSlice<f32>, shadow: CudaSlice<bf16> },
}

pub struct CudaBuf {
    pub(crate) len: usize,
    pub(crate) store: Store,
}

impl CudaBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// "bf16", "f32" or "f32+bf16" (a master weight).
    pub fn dtype(&self) -> &'static str {
        match self.store {
            Store::Bf16(_) => "bf16",
            Store::F32(_) => "f32",
            Store::Master { .. } => "f32+bf16",
        }
    }
}

pub struct CudaIBuf {
    pub(crate) host: Vec<i32>,
    pub(crate) dev: CudaSlice<i32>,
}

impl CudaIBuf {
    pub fn len(&self) -> usize {
        self.host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }

    pub fn host(&self) -> &[i32] {
        &self.host
    }
}

/// A bf16 view of a buffer for reading: borrowed, or a temporary conversion of f32 storage.
pub enum Bf16Arg<'a> {
    Borrowed(&'a CudaSlice<bf16>),
    Owned(CudaSlice<bf16>),
}

impl Bf16Arg<'_> {
    pub fn get(&self) -> &CudaSlice<bf16> {
        match self {
            Bf16Arg::Borrowed(s) => s,
            Bf16Arg::Owned(s) => s,
        }
    }
}

/// An f32 view of a buffer for reading (statistics): borrowed, or a temporary widening of bf16.
pub enum F32Arg<'a> {
    Borrowed(&'a CudaSlice<f32>),
    Owned(CudaSlice<f32>),
}

impl F32Arg<'_> {
    pub fn get(&self) -> &CudaSlice<f32> {
        match self {
            F32Arg::Borrowed(s) => s,
            F32Arg::Owned(s) => s,
        }
    }
}

/// Where an in-place op writes: bf16, or f32 (with the bf16 copy of a master to refresh afterwards).
pub enum InPlace<'a> {
    Bf16(&'a mut CudaSlice<bf16>),
    F32(&'a mut CudaSlice<f32>, Option<&'a mut CudaSlice<bf16>>),
}

/// A read-only f32 or bf16 operand.
pub enum AnyArg<'a> {
    Bf16(&'a CudaSlice<bf16>),
    F32(&'a CudaSlice<f32>),
}

pub fn view<T>(s: &CudaSlice<T>, len: usize) -> CudaView<'_, T> {
    s.slice(0..len)
}

impl CudaBackend {
    /// Zero-filled device memory for `n` elements (at least one, since the driver refuses empty
    /// allocations; `len` keeps the logical size).
    pub(crate) fn alloc_zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        Ok(self.stream.alloc_zeros::<T>(n.max(1))?)
    }

    pub(crate) fn new_bf16(&self, n: usize) -> Result<CudaBuf> {
        Ok(CudaBuf { len: n, store: Store::Bf16(self.alloc_zeros(n)?) })
    }

    pub(crate) fn upload(&self, data: &[f32]) -> Result<CudaBuf> {
        let host: Vec<bf16> = data.iter().map(|&v| bf16::from_f32(v)).collect();
        let mut s = self.alloc_zeros::<bf16>(data.len())?;
        if !host.is_empty() {
            self.stream.memcpy_htod(&host, &mut s)?;
        }
        Ok(CudaBuf { len: data.len(), store: Store::Bf16(s) })
    }

    /// Uploads into f32 storage (the trait's `upload` makes bf16): for accumulators and master
    /// weights that must keep full precision.
    pub fn upload_f32(&self, data: &[f32]) -> Result<CudaBuf> {
        let mut s = self.alloc_zeros::<f32>(data.len())?;
        if !data.is_empty() {
            self.stream.memcpy_htod(data, &mut s)?;
        }
        Ok(CudaBuf { len: data.len(), store: Store::F32(s) })
    }

    /// A parameter at full precision with its bf16 copy made at once (`Backend::upload_master`).
    pub fn upload_master(&self, data: &[f32]) -> Result<CudaBuf> {
        let mut buf = self.upload_f32(data)?;
        self.as_master(&mut buf)?;
        Ok(buf)
    }

    pub(crate) fn upload_i32(&self, data: &[i32]) -> Result<CudaIBuf> {
        let mut dev = self.alloc_zeros::<i32>(data.len())?;
        if !data.is_empty() {
            self.stream.memcpy_htod(data, &mut dev)?;
        }
        Ok(CudaIBuf { host: data.to_vec(), dev })
    }

    pub(crate) fn download(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        let n = buf.len;
        if n == 0 {
            return Ok(Vec::new());
        }
        match &buf.store {
            Store::Bf16(s) => {
                let mut host = vec![bf16::ZERO; n];
                self.to_host(&view(s, n), &mut host)?;
                Ok(host.into_iter().map(f32::from).collect())
            }
            Store::F32(s) | Store::Master { master: s, .. } => {
                let mut host = vec![0.0f32; n];
                self.to_host(&view(s, n), &mut host)?;
                Ok(host)
            }
        }
    }

    /// Reads a buffer as bf16 (the shadow of a master; a rounded temporary of f32 storage).
    pub(crate) fn as_bf16<'a>(&self, buf: &'a CudaBuf) -> Result<Bf16Arg<'a>> {
        Ok(match &buf.store {
            Store::Bf16(s) | Store::Master { shadow: s, .. } => Bf16Arg::Borrowed(s),
            Store::F32(s) => {
                let mut t = self.alloc_zeros::<bf16>(buf.len)?;
                self.convert_to_bf16(s, &mut t, buf.len)?;
                Bf16Arg::Owned(t)
            }
        })
    }

    /// Reads a buffer as f32 (a widened temporary of bf16 storage).
    pub(crate) fn as_f32<'a>(&self, buf: &'a CudaBuf) -> Result<F32Arg<'a>> {
        Ok(match &buf.store {
            Store::F32(s) | Store::Master { master: s, .. } => F32Arg::Borrowed(s),
            Store::Bf16(s) => {
                let mut t = self.alloc_zeros::<f32>(buf.len)?;
                self.convert_to_f32(s, &mut t, buf.len)?;
                F32Arg::Owned(t)
            }
        })
    }

    pub(crate) fn as_any(buf: &CudaBuf) -> AnyArg<'_> {
        match &buf.store {
            Store::Bf16(s) => AnyArg::Bf16(s),
            Store::F32(s) | Store::Master { master: s, .. } => AnyArg::F32(s),
        }
    }

    /// A buffer's storage changes only outside a capture: inside one, the new allocation would be
    /// the graph's. The model settles every storage in a direct run before recording, so this
    /// error means a bug, and the step then runs unrecorded.
    fn storage_may_change(&self) -> Result<()> {
        if self.capturing.load(std::sync::atomic::Ordering::Relaxed) {
            bail!("a buffer changed its storage type during a CUDA graph capture");
        }
        Ok(())
    }

    /// The buffer as a bf16 output that the op overwrites entirely (old contents are dropped).
    pub(crate) fn out_bf16<'a>(&self, buf: &'a mut CudaBuf) -> Result<&'a mut CudaSlice<bf16>> {
        if !matches!(buf.store, Store::Bf16(_)) {
            self.storage_may_change()?;
            buf.store = Store::Bf16(self.alloc_zeros(buf.len)?);
        }
        match &mut buf.store {
            Store::Bf16(s) => Ok(s),
            _ => unreachable!(),
        }
    }

    /// The buffer as an f32 output that the op overwrites entirely.
    pub(crate) fn out_f32<'a>(&self, buf: &'a mut CudaBuf) -> Result<&'a mut CudaSlice<f32>> {
        if !matches!(buf.store, Store::F32(_)) {
            self.storage_may_change()?;
            buf.store = Store::F32(self.alloc_zeros(buf.len)?);
        }
        match &mut buf.store {
            Store::F32(s) => Ok(s),
            _ => unreachable!(),
        }
    }

    /// The buffer as an f32 accumulator, keeping its value (bf16 converts exactly).
    pub(crate) fn acc_f32<'a>(&self, buf: &'a mut CudaBuf) -> Result<&'a mut CudaSlice<f32>> {
        let n = buf.len;
        if !matches!(buf.store, Store::F32(_)) {
            self.storage_may_change()?;
        }
        match &buf.store {
            Store::F32(_) => {}
            Store::Bf16(s) => {
                let mut f = self.alloc_zeros::<f32>(n)?;
                self.convert_to_f32(s, &mut f, n)?;
                buf.store = Store::F32(f);
            }
            Store::Master { master, .. } => {
                // Rare (accumulating into a parameter): keep the master, drop the bf16 copy.
                let mut f = self.alloc_zeros::<f32>(n)?;
                self.stream.memcpy_dtod(&view(master, n), &mut f.slice_mut(0..n))?;
                buf.store = Store::F32(f);
            }
        }
        match &mut buf.store {
            Store::F32(s) => Ok(s),
            _ => unreachable!(),
        }
    }

    /// The buffer as a bf16 buffer updated in place, keeping its value (f32 storage is rounded).
    pub(crate) fn inout_bf16<'a>(&self, buf: &'a mut CudaBuf) -> Result<&'a mut CudaSlice<bf16>> {
        if !matches!(buf.store, Store::Bf16(_)) {
            self.storage_may_change()?;
            let n = buf.len;
            let mut t = self.alloc_zeros::<bf16>(n)?;
            match &buf.store {
                Store::F32(s) => self.convert_to_bf16(s, &mut t, n)?,
                Store::Master { shadow, .. } => self.stream.memcpy_dtod(&view(shadow, n), &mut t.slice_mut(0..n))?,
                Store::Bf16(_) => unreachable!(),
            }
            buf.store = Store::Bf16(t);
        }
        match &mut buf.store {
            Store::Bf16(s) => Ok(s),
            _ => unreachable!(),
        }
    }

    /// A parameter as f32 master + bf16 copy (created, value kept, on the first AdamW step).
    pub(crate) fn as_master<'a>(&self, buf: &'a mut CudaBuf) -> Result<(&'a mut CudaSlice<f32>, &'a mut CudaSlice<bf16>)> {
        let n = buf.len;
        if !matches!(buf.store, Store::Master { .. }) {
            self.storage_may_change()?;
        }
        match &buf.store {
            Store::Master { .. } => {}
            Store::Bf16(shadow) => {
                let mut master = self.alloc_zeros::<f32>(n)?;
                self.convert_to_f32(shadow, &mut master, n)?;
                let mut copy = self.alloc_zeros::<bf16>(n)?;
                self.stream.memcpy_dtod(&view(shadow, n), &mut copy.slice_mut(0..n))?;
                buf.store = Store::Master { master, shadow: copy };
            }
            Store::F32(master) => {
                let mut shadow = self.alloc_zeros::<bf16>(n)?;
                self.convert_to_bf16(master, &mut shadow, n)?;
                let mut copy = self.alloc_zeros::<f32>(n)?;
                self.stream.memcpy_dtod(&view(master, n), &mut copy.slice_mut(0..n))?;
                buf.store = Store::Master { master: copy, shadow };
            }
        }
        match &mut buf.store {
            Store::Master { master, shadow } => Ok((master, shadow)),
            _ => unreachable!(),
        }
    }

    /// In-place access in the buffer's own storage; call `finish_in_place` after the kernel.
    pub(crate) fn in_place(buf: &mut CudaBuf) -> InPlace<'_> {
        match &mut buf.store {
            Store::Bf16(s) => InPlace::Bf16(s),
            Store::F32(s) => InPlace::F32(s, None),
            Store::Master { master, shadow } => InPlace::F32(master, Some(shadow)),
        }
    }

    /// Refreshes the bf16 copy of a master after an in-place f32 update.
    pub(crate) fn finish_in_place(&self, p: InPlace<'_>, n: usize) -> Result<()> {
        if let InPlace::F32(master, Some(shadow)) = p {
            self.convert_to_bf16(master, shadow, n)?;
        }
        Ok(())
    }

    /// A device-to-host copy that returns once the data has arrived. cudarc issues an async copy
    /// for plain host slices; drivers block for pageable memory, but CUDA does not promise it, so
    /// the stream is synchronised explicitly (free when the copy already blocked).
    pub(crate) fn to_host<T: DeviceRepr, S: DevicePtr<T>>(&self, src: &S, dst: &mut [T]) -> Result<()> {
        self.stream.memcpy_dtoh(src, dst)?;
        self.stream.synchronize()?;
        Ok(())
    }

    pub(crate) fn check_len(what: &str, have: usize, need: usize) -> Result<()> {
        if have < need {
            bail!("{what}: buffer holds {have} elements, the op needs {need}");
        }
        Ok(())
    }
}
