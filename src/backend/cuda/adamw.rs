//! The optimizer: the global gradient norm's sums of squares and the AdamW update with f32 master
//! weights. Kernels: adamw.cu. CPU twin: cpu/adamw.rs.

use super::buffer::{AnyArg, CudaBuf};
use super::{cfg_1d, CudaBackend};
use crate::backend::AdamW;
use crate::backend::{AdamWStep, Moments};
use anyhow::{bail, Result};

impl CudaBackend {
    /// Σ x² over all of `xs`, accumulated on the device and read back once.
    pub(crate) fn sum_squares_all(&self, xs: &[&CudaBuf]) -> Result<f64> {
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
    pub(crate) fn adamw(&self, param: &mut CudaBuf, grad: &CudaBuf, moments: Moments<'_, CudaBuf>, hp: AdamW, at: AdamWStep) -> Result<()> {
        let Moments { m, v } = moments;
        let AdamWStep { lr, step, grad_scale } = at;
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
}
