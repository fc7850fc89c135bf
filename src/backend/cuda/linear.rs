//! Dense layers as cuBLASLt GEMMs (blas.rs), with the bias gradient's column sums (rows.rs).
//! CPU twin: cpu/linear.rs.

use super::blas::{GemmShape, OutType};
use super::buffer::CudaBuf;
use super::CudaBackend;
use crate::backend::{Gemm, LinearGrads};
use anyhow::{bail, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut};

impl CudaBackend {
    /// `y[m,n] = x[m,k] · w[n,k]ᵀ + bias`, as the column-major `yᵀ[n,m] = op(w)·xᵀ` with
    /// A = w (stored k×n, transposed), B = x (stored k×m); the bias epilogue adds bias[n] to each
    /// of D's n rows.
    pub(crate) fn linear_fwd(&self, x: &CudaBuf, w: &CudaBuf, bias: Option<&CudaBuf>, y: &mut CudaBuf, dims: Gemm) -> Result<()> {
        let Gemm { m, n, k } = dims;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            bail!("linear_fwd with k = 0 is not supported on CUDA");
        }
        Self::check_len("linear_fwd x", x.len, m * k)?;
        Self::check_len("linear_fwd w", w.len, n * k)?;
        Self::check_len("linear_fwd y", y.len, m * n)?;
        if let Some(b) = bias {
            Self::check_len("linear_fwd bias", b.len, n)?;
        }
        let xs = self.as_bf16(x)?;
        let ws = self.as_bf16(w)?;
        let bs = bias.map(|b| self.as_bf16(b)).transpose()?;
        let ys = self.out_bf16(y)?;
        let shape =
            GemmShape { m: n as u64, n: m as u64, k: k as u64, trans_a: true, trans_b: false, lda: k as i64, ldb: k as i64, ldc: n as i64 };
        let (wp, _g1) = ws.get().device_ptr(&self.stream);
        let (xp, _g2) = xs.get().device_ptr(&self.stream);
        let bp = bs.as_ref().map(|b| b.get().device_ptr(&self.stream));
        let (yp, _g3) = ys.device_ptr_mut(&self.stream);
        unsafe { self.blas.matmul(shape, wp, xp, yp, OutType::Bf16, bp.as_ref().map(|b| b.0), false) }?;
        self.after_launch("cuBLASLt linear_fwd")
    }

    /// Backward of `linear_forward`:
    /// - `dx[m,k] = dy[m,n] · w[n,k]`: column-major `dxᵀ[k,m] = wᵀ(k×n) · dyᵀ(n×m)`, overwritten (bf16);
    /// - `dw[n,k] += dyᵀ · x`: column-major `dwᵀ[k,n] = xᵀ(k×m) · dy(m×n)`, beta = 1, f32;
    /// - `db[n] += Σ_rows dy`, f32 column sums.
    pub(crate) fn linear_bwd(&self, x: &CudaBuf, w: &CudaBuf, dy: &CudaBuf, grads: LinearGrads<'_, CudaBuf>, dims: Gemm) -> Result<()> {
        let Gemm { m, n, k } = dims;
        let LinearGrads { dx, dw, db } = grads;
        Self::check_len("linear_bwd x", x.len, m * k)?;
        Self::check_len("linear_bwd w", w.len, n * k)?;
        Self::check_len("linear_bwd dy", dy.len, m * n)?;
        Self::check_len("linear_bwd dw", dw.len, n * k)?;
        let dys = self.as_bf16(dy)?;
        if let Some(dx) = dx {
            Self::check_len("linear_bwd dx", dx.len, m * k)?;
            if m > 0 && k > 0 {
                let ws = self.as_bf16(w)?;
                let dxs = self.out_bf16(dx)?;
                if n == 0 {
                    self.stream.memset_zeros(dxs)?;
                } else {
                    let shape = GemmShape {
                        m: k as u64,
                        n: m as u64,
                        k: n as u64,
                        trans_a: false,
                        trans_b: false,
                        lda: k as i64,
                        ldb: n as i64,
                        ldc: k as i64,
                    };
                    let (wp, _g1) = ws.get().device_ptr(&self.stream);
                    let (gp, _g2) = dys.get().device_ptr(&self.stream);
                    let (dp, _g3) = dxs.device_ptr_mut(&self.stream);
                    unsafe { self.blas.matmul(shape, wp, gp, dp, OutType::Bf16, None, false) }?;
                    self.after_launch("cuBLASLt linear_bwd dx")?;
                }
            }
        }
        if m > 0 && n > 0 && k > 0 {
            let xs = self.as_bf16(x)?;
            let dws = self.acc_f32(dw)?;
            let shape = GemmShape {
                m: k as u64,
                n: n as u64,
                k: m as u64,
                trans_a: false,
                trans_b: true,
                lda: k as i64,
                ldb: n as i64,
                ldc: k as i64,
            };
            let (xp, _g1) = xs.get().device_ptr(&self.stream);
            let (gp, _g2) = dys.get().device_ptr(&self.stream);
            let (dp, _g3) = dws.device_ptr_mut(&self.stream);
            unsafe { self.blas.matmul(shape, xp, gp, dp, OutType::F32, None, true) }?;
            self.after_launch("cuBLASLt linear_bwd dw")?;
        }
        if let Some(db) = db {
            Self::check_len("linear_bwd db", db.len, n)?;
            let dbs = self.acc_f32(db)?;
            self.col_sum_add(dys.get(), dbs, m, n)?;
        }
        Ok(())
    }
}
