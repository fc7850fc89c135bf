//! Memory, elementwise, row and optimizer ops. Kernels: elementwise.cu, rows.cu, adamw.cu.
//! CPU twins: cpu/elementwise.rs, cpu/adamw.rs, CpuBackend::{gather_rows, scatter_add_rows}.

use super::buffer::{view, AnyArg, CudaBuf, CudaIBuf, InPlace, Store};
use super::{cfg_1d, cfg_rows, threads_for, to_i32, CudaBackend};
use crate::backend::{AdamW, Dropout};
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

    pub(crate) fn zero_fill(&self, buf: &mut CudaBuf) -> Result<()> {
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
    pub(crate) fn copy_buf(&self, src: &CudaBuf, dst: &mut CudaBuf) -> Result<()> {
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
    pub(crate) fn add_into(&self, dst: &mut CudaBuf, src: &CudaBuf) -> Result<()> {
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
    pub(crate) fn dropout_in_place(&self, x: &mut CudaBuf, drop: Dropout, stream: u64) -> Result<()> {
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

    pub(crate) fn gelu_forward(&self, x: &CudaBuf, y: &mut CudaBuf) -> Result<()> {
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

    pub(crate) fn gelu_backward(&self, x: &CudaBuf, dy: &CudaBuf, dx: &mut CudaBuf) -> Result<()> {
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

    /// Host check of row indices: in range, and (for scatters) distinct, since a repeated row
    /// would race on the GPU.
    fn check_rows(what: &str, rows: &CudaIBuf, n_rows: usize, limit: usize, distinct: bool) -> Result<()> {
        Self::check_len(&format!("{what} row indices"), rows.len(), n_rows)?;
        let mut seen = if distinct { vec![false; limit] } else { Vec::new() };
        for (i, &r) in rows.host[..n_rows].iter().enumerate() {
            if r < 0 || r as usize >= limit {
                bail!("{what}: row index {r} at position {i} is outside 0..{limit}");
            }
            if distinct {
                if seen[r as usize] {
                    bail!("{what}: row {r} appears twice (rows must be distinct)");
                }
                seen[r as usize] = true;
            }
        }
        Ok(())
    }

    pub(crate) fn gather(&self, x: &CudaBuf, rows: &CudaIBuf, out: &mut CudaBuf, n_rows: usize, cols: usize) -> Result<()> {
        if n_rows == 0 || cols == 0 {
            return Ok(());
        }
        Self::check_rows("gather_rows", rows, n_rows, x.len / cols, false)?;
        Self::check_len("gather_rows output", out.len, n_rows * cols)?;
        let (nr, nc) = (to_i32("rows", n_rows)?, to_i32("cols", cols)?);
        let xs = self.as_bf16(x)?;
        let os = self.out_bf16(out)?;
        launch!(self, "gather_rows_bf16", cfg_rows(n_rows, threads_for(cols, 256), 0)?, [xs.get(), &rows.dev, os, &nr, &nc])
    }

    pub(crate) fn scatter_add(&self, dout: &CudaBuf, rows: &CudaIBuf, dx: &mut CudaBuf, n_rows: usize, cols: usize) -> Result<()> {
        if n_rows == 0 || cols == 0 {
            return Ok(());
        }
        Self::check_rows("scatter_add_rows", rows, n_rows, dx.len / cols, true)?;
        Self::check_len("scatter_add_rows source", dout.len, n_rows * cols)?;
        let (nr, nc) = (to_i32("rows", n_rows)?, to_i32("cols", cols)?);
        let n = dx.len;
        let gs = self.as_bf16(dout)?;
        let cfg = cfg_rows(n_rows, threads_for(cols, 256), 0)?;
        let mut target = Self::in_place(dx);
        match &mut target {
            InPlace::Bf16(d) => launch!(self, "scatter_add_rows_bf16", cfg, [gs.get(), &rows.dev, &mut **d, &nr, &nc])?,
            InPlace::F32(d, _) => launch!(self, "scatter_add_rows_f32", cfg, [gs.get(), &rows.dev, &mut **d, &nr, &nc])?,
        }
        self.finish_in_place(target, n)
    }

    /// `acc[c] += Σ_r x[r, c]` into f32 (bias and token-type gradients).
    pub(crate) fn col_sum_add(&self, x: &CudaSlice<bf16>, acc: &mut CudaSlice<f32>, rows: usize, cols: usize) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let (nr, nc) = (to_i32("rows", rows)?, to_i32("cols", cols)?);
        let grid_y = rows.div_ceil(256);
        if grid_y > 65535 {
            bail!("col_sum_add: {rows} rows is more than one launch covers");
        }
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (cols.div_ceil(32) as u32, grid_y as u32, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, "col_sum_add_bf16", cfg, [x, acc, &nr, &nc])
    }

    /// Σ x² over all of `xs`, accumulated on the device and read back once.
    pub(crate) fn sum_of_squares(&self, xs: &[&CudaBuf]) -> Result<f64> {
        let mut scratch = self.scratch()?;
        let acc = &mut scratch.f64_acc;
        self.stream.memset_zeros(acc)?;
        for x in xs.iter().filter(|x| x.len > 0) {
            let n64 = x.len as u64;
            // A bounded grid keeps the f64 atomics few.
            let cfg = cudarc::driver::LaunchConfig {
                grid_dim: (x.len.div_ceil(256).min(1024) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            match Self::as_any(x) {
                AnyArg::Bf16(s) => launch!(self, "sum_squares_bf16", cfg, [s, &n64, &mut *acc])?,
                AnyArg::F32(s) => launch!(self, "sum_squares_f32", cfg, [s, &n64, &mut *acc])?,
            }
        }
        let mut host = [0.0f64];
        self.to_host(&*acc, &mut host)?;
        Ok(host[0])
    }

    /// One AdamW step. The parameter becomes (or stays) an f32 master with a bf16 copy, the moments f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn adamw_step(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        hp: AdamW,
        lr: f32,
        step: u64,
        grad_scale: f32,
    ) -> Result<()> {
        let n = param.len;
        if grad.len != n || m.len != n || v.len != n {
            bail!("adamw: lengths differ (param {n}, grad {}, m {}, v {})", grad.len, m.len, v.len);
        }
        if step == 0 {
            bail!("adamw: step is 1-based");
        }
        if n == 0 {
            return Ok(());
        }
        // The CPU twin's host arithmetic, so both run the same f32 constants.
        let bc1 = 1.0 - (hp.beta1 as f64).powi(step as i32);
        let bc2 = 1.0 - (hp.beta2 as f64).powi(step as i32);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = 1.0 - lr * hp.weight_decay;
        let (one_m_b1, one_m_b2) = (1.0 - hp.beta1, 1.0 - hp.beta2);
        let n64 = n as u64;
        let ms = self.acc_f32(m)?;
        let vs = self.acc_f32(v)?;
        let (pm, ps) = self.as_master(param)?;
        let cfg = cfg_1d(n);
        match Self::as_any(grad) {
            AnyArg::Bf16(g) => launch!(
                self,
                "adamw_bf16g",
                cfg,
                [pm, ps, g, ms, vs, &n64, &grad_scale, &hp.beta2, &one_m_b1, &one_m_b2, &hp.eps, &decay, &step_size, &bc2_sqrt]
            ),
            AnyArg::F32(g) => launch!(
                self,
                "adamw_f32g",
                cfg,
                [pm, ps, g, ms, vs, &n64, &grad_scale, &hp.beta2, &one_m_b1, &one_m_b2, &hp.eps, &decay, &step_size, &bc2_sqrt]
            ),
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
