//! AdamW (decoupled weight decay), with the operation order of PyTorch's single-tensor AdamW.

use crate::backend::AdamW;
use crate::backend::{AdamWStep, Moments};
use rayon::prelude::*;

/// `grad_scale` multiplies each gradient as it is read (gradient clipping; 1 leaves it as is).
pub fn adamw(param: &mut [f32], grad: &[f32], moments: Moments<'_, [f32]>, hp: AdamW, at: AdamWStep) {
    let Moments { m, v } = moments;
    let AdamWStep { lr, step, grad_scale } = at;
    let bc1 = 1.0 - (hp.beta1 as f64).powi(step as i32);
    let bc2 = 1.0 - (hp.beta2 as f64).powi(step as i32);
    let step_size = (lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = 1.0 - lr * hp.weight_decay;
    param.par_iter_mut().zip(grad.par_iter()).zip(m.par_iter_mut().zip(v.par_iter_mut())).for_each(|((p, &g), (mm, vv))| {
        let g = g * grad_scale;
        *p *= decay;
        *mm += (g - *mm) * (1.0 - hp.beta1);
        *vv = *vv * hp.beta2 + (1.0 - hp.beta2) * g * g;
        let denom = vv.sqrt() / bc2_sqrt + hp.eps;
        *p -= step_size * *mm / denom;
    });
}

pub fn sum_squares(x: &[f32]) -> f64 {
    x.par_chunks(1 << 14).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).sum()
}
