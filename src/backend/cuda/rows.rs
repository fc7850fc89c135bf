//! Row gathers and scatters (the LM head's rows) and column sums (bias gradients). Kernels:
//! rows.cu. CPU twin: cpu/rows.rs.

use super::buffer::{CudaBuf, CudaIBuf, InPlace};
use super::{cfg_rows, threads_for, to_i32, CudaBackend};
use anyhow::{bail, Result};
use cudarc::driver::CudaSlice;
use half::bf16;

impl CudaBackend {
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

    pub(crate) fn gather_rows(&self, x: &CudaBuf, rows: &CudaIBuf, out: &mut CudaBuf, n_rows: usize, cols: usize) -> Result<()> {
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

    pub(crate) fn scatter_add_rows(&self, dout: &CudaBuf, rows: &CudaIBuf, dx: &mut CudaBuf, n_rows: usize, cols: usize) -> Result<()> {
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

    pub(crate) fn scatter_rows(&self, x: &CudaBuf, rows: &CudaIBuf, out: &mut CudaBuf, n_rows: usize, cols: usize) -> Result<()> {
        if n_rows == 0 || cols == 0 {
            return Ok(());
        }
        Self::check_rows("scatter_rows", rows, n_rows, out.len / cols, true)?;
        Self::check_len("scatter_rows source", x.len, n_rows * cols)?;
        let (nr, nc) = (to_i32("rows", n_rows)?, to_i32("cols", cols)?);
        let n = out.len;
        let xs = self.as_bf16(x)?;
        let cfg = cfg_rows(n_rows, threads_for(cols, 256), 0)?;
        let mut target = Self::in_place(out);
        match &mut target {
            InPlace::Bf16(d) => launch!(self, "scatter_rows_bf16", cfg, [xs.get(), &rows.dev, &mut **d, &nr, &nc])?,
            InPlace::F32(d, _) => launch!(self, "scatter_rows_f32", cfg, [xs.get(), &rows.dev, &mut **d, &nr, &nc])?,
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
}
