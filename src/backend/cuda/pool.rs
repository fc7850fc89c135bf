//! Mean pooling over the real rows of each sequence. Kernels: pool.cu. CPU twin: cpu/pool.rs.

use super::buffer::{CudaBuf, CudaIBuf};
use super::{cfg_1d, CudaBackend};
use crate::backend::PoolShape;
use anyhow::{ensure, Result};

impl CudaBackend {
    fn check_pool(seq_buf: usize, mask: &CudaIBuf, pooled: usize, s: PoolShape) -> Result<()> {
        let ok = seq_buf == s.batch * s.seq * s.cols && mask.dev.len() == s.batch * s.seq && pooled == s.batch * s.cols;
        ensure!(ok, "mean pooling {s:?}: buffers of {seq_buf}, {} and {pooled} values", mask.dev.len());
        Ok(())
    }

    pub(crate) fn mean_pool_fwd(&self, x: &CudaBuf, key_mask: &CudaIBuf, out: &mut CudaBuf, s: PoolShape) -> Result<()> {
        Self::check_pool(x.len, key_mask, out.len, s)?;
        if out.len == 0 {
            return Ok(());
        }
        let (b, q, c) = (s.batch as u64, s.seq as u64, s.cols as u64);
        let xs = self.as_bf16(x)?;
        let os = self.out_bf16(out)?;
        launch!(self, "mean_pool_fwd_bf16", cfg_1d(s.batch * s.cols), [xs.get(), &key_mask.dev, os, &b, &q, &c])
    }

    pub(crate) fn mean_pool_bwd(&self, dout: &CudaBuf, key_mask: &CudaIBuf, dx: &mut CudaBuf, s: PoolShape) -> Result<()> {
        Self::check_pool(dx.len, key_mask, dout.len, s)?;
        if dout.len == 0 {
            return Ok(());
        }
        let (b, q, c) = (s.batch as u64, s.seq as u64, s.cols as u64);
        let gs = self.as_bf16(dout)?;
        let ds = self.out_bf16(dx)?;
        launch!(self, "mean_pool_bwd_bf16", cfg_1d(s.batch * s.cols), [gs.get(), &key_mask.dev, ds, &b, &q, &c])
    }
}
