//! Conversions, copies, sums, dropout, GELU, ReLU, tanh and the Philox generator. Kernels: elementwise.cu.
//! CPU twin: cpu/elementwise.rs.

use super::buffer::{view, AnyArg, CudaBuf, InPlace, Store};
use super::{cfg_1d, CudaBackend};
use crate::backend::{Activation, Dropout};
use anyhow::{bail, Result};
use cudarc::driver::CudaSlice;
use half::bf16;

impl CudaBackend {
    pub(crate) fn convert_to_f32(&self, src: &CudaSlice<bf16>, dst: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        launch!(self, "convert_bf16_to_f32", cfg_1d(n), [src, dst, &n64])
    }

    pub(crate) fn convert_to_bf16(&self, src: &CudaSlice<f32>, dst: &mut CudaSlice<bf16>, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        launch!(self, "convert_f32_to_bf16", cfg_1d(n), [src, dst, &n64])
    }

    pub(crate) fn fill_zero(&self, buf: &mut CudaBuf) -> Result<()> {
        match &mut buf.store {
            Store::Bf16(s) => self.stream.memset_zeros(s)?,
            Store::F32(s) => self.stream.memset_zeros(s)?,
            Store::Master { master, shadow } => {
                self.stream.memset_zeros(master)?;
                self.stream.memset_zeros(shadow)?;
            }
        }
        Ok(())
    }

    /// `dst` takes `src`'s value and storage type.
    pub(crate) fn copy(&self, src: &CudaBuf, dst: &mut CudaBuf) -> Result<()> {
        if src.len != dst.len {
            bail!("copy: source has {} elements, destination {}", src.len, dst.len);
        }
        let n = src.len;
        if n == 0 {
            return Ok(());
        }
        match &src.store {
            Store::Bf16(s) => {
                let d = self.out_bf16(dst)?;
                self.stream.memcpy_dtod(&view(s, n), &mut d.slice_mut(0..n))?;
            }
            Store::F32(s) => {
                let d = self.out_f32(dst)?;
                self.stream.memcpy_dtod(&view(s, n), &mut d.slice_mut(0..n))?;
            }
            Store::Master { master, shadow } => {
                let (dm, ds) = self.as_master(dst)?;
                self.stream.memcpy_dtod(&view(master, n), &mut dm.slice_mut(0..n))?;
                self.stream.memcpy_dtod(&view(shadow, n), &mut ds.slice_mut(0..n))?;
            }
        }
        Ok(())
    }

    /// `dst += src`, computed in f32 and stored in `dst`'s type.
    pub(crate) fn add_assign(&self, dst: &mut CudaBuf, src: &CudaBuf) -> Result<()> {
        if src.len != dst.len {
            bail!("add_assign: source has {} elements, destination {}", src.len, dst.len);
        }
        let n = src.len;
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        let cfg = cfg_1d(n);
        let mut target = Self::in_place(dst);
        match (&mut target, Self::as_any(src)) {
            (InPlace::Bf16(d), AnyArg::Bf16(s)) => launch!(self, "add_bf16_bf16", cfg, [&mut **d, s, &n64])?,
            (InPlace::Bf16(d), AnyArg::F32(s)) => launch!(self, "add_bf16_f32", cfg, [&mut **d, s, &n64])?,
            (InPlace::F32(d, _), AnyArg::Bf16(s)) => launch!(self, "add_f32_bf16", cfg, [&mut **d, s, &n64])?,
            (InPlace::F32(d, _), AnyArg::F32(s)) => launch!(self, "add_f32_f32", cfg, [&mut **d, s, &n64])?,
        }
        self.finish_in_place(target, n)
    }

    /// Inverted dropout in place with the mask of (`drop.seed`, `stream`), element i of the buffer
    /// using Philox number i: the CPU backend's mask exactly.
    pub(crate) fn dropout(&self, x: &mut CudaBuf, drop: Dropout, stream: u64) -> Result<()> {
        if !drop.active() || x.len == 0 {
            return Ok(());
        }
        let n = x.len;
        let n64 = n as u64;
        let p = drop.p;
        let scale = 1.0f32 / (1.0 - p);
        let seed = drop.seed;
        let mut target = Self::in_place(x);
        match &mut target {
            InPlace::Bf16(d) => launch!(self, "dropout_bf16", cfg_1d(n), [&mut **d, &n64, &p, &scale, &seed, &stream])?,
            InPlace::F32(d, _) => launch!(self, "dropout_f32", cfg_1d(n), [&mut **d, &n64, &p, &scale, &seed, &stream])?,
        }
        self.finish_in_place(target, n)
    }

    pub(crate) fn gelu_fwd(&self, x: &CudaBuf, y: &mut CudaBuf) -> Result<()> {
        Self::check_len("gelu_fwd output", y.len, x.len)?;
        let n = x.len;
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        let xs = self.as_bf16(x)?;
        let ys = self.out_bf16(y)?;
        launch!(self, "gelu_fwd_bf16", cfg_1d(n), [xs.get(), ys, &n64])
    }

    pub(crate) fn gelu_bwd(&self, x: &CudaBuf, dy: &CudaBuf, dx: &mut CudaBuf) -> Result<()> {
        Self::check_len("gelu_bwd dy", dy.len, x.len)?;
        Self::check_len("gelu_bwd dx", dx.len, x.len)?;
        let n = x.len;
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        let xs = self.as_bf16(x)?;
        let gs = self.as_bf16(dy)?;
        let ds = self.out_bf16(dx)?;
        launch!(self, "gelu_bwd_bf16", cfg_1d(n), [xs.get(), gs.get(), ds, &n64])
    }

    pub(crate) fn activation_fwd(&self, act: Activation, x: &CudaBuf, y: &mut CudaBuf) -> Result<()> {
        Self::check_len("activation_fwd output", y.len, x.len)?;
        let n = x.len;
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        let xs = self.as_bf16(x)?;
        let ys = self.out_bf16(y)?;
        match act {
            Activation::Relu => launch!(self, "relu_fwd_bf16", cfg_1d(n), [xs.get(), ys, &n64]),
            Activation::Tanh => launch!(self, "tanh_fwd_bf16", cfg_1d(n), [xs.get(), ys, &n64]),
        }
    }

    pub(crate) fn activation_bwd(&self, act: Activation, saved: &CudaBuf, dy: &CudaBuf, dx: &mut CudaBuf) -> Result<()> {
        Self::check_len("activation_bwd dy", dy.len, saved.len)?;
        Self::check_len("activation_bwd dx", dx.len, saved.len)?;
        let n = saved.len;
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        let ss = self.as_bf16(saved)?;
        let gs = self.as_bf16(dy)?;
        let ds = self.out_bf16(dx)?;
        match act {
            Activation::Relu => launch!(self, "relu_bwd_bf16", cfg_1d(n), [ss.get(), gs.get(), ds, &n64]),
            Activation::Tanh => launch!(self, "tanh_bwd_bf16", cfg_1d(n), [ss.get(), gs.get(), ds, &n64]),
        }
    }

    /// Philox numbers `first .. first + n` of (`seed`, `stream`) drawn on the GPU, for tests that
    /// compare the device generator with `crate::rng` bit for bit.
    pub fn philox_u32_on_device(&self, seed: u64, stream: u64, first: u64, n: usize) -> Result<Vec<u32>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut out = self.stream.alloc_zeros::<u32>(n)?;
        let n64 = n as u64;
        launch!(self, "philox_fill_u32", cfg_1d(n), [&mut out, &n64, &seed, &stream, &first])?;
        let mut host = vec![0u32; n];
        self.to_host(&out, &mut host)?;
        Ok(host)
    }
}
