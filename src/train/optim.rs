//! AdamW over the model's trainable parameters (`XlmR::trainable`: the backbone, or the length
//! predictor alone), with global gradient-norm clipping and a skipped step when the gradients
//! are not finite.

use crate::backend::{AdamW, Backend};
use crate::backend::{AdamWStep, Moments};
use crate::model::{ParamStorage, XlmR};
use anyhow::{bail, Result};
use std::path::Path;

pub struct Optimizer<B: Backend> {
    pub hp: AdamW,
    /// Number of updates applied so far (1-based bias correction uses `step + 1`).
    pub step: u64,
    /// Moments of the trainable parameters: `m[j]` belongs to parameter `trainable.start + j`.
    m: Vec<B::Buf>,
    v: Vec<B::Buf>,
    trainable: std::ops::Range<usize>,
}

/// What one `update` did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateInfo {
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// True when the norm was NaN/inf and nothing was changed.
    pub skipped: bool,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(model: &XlmR<B>, hp: AdamW) -> Result<Self> {
        let be = model.backend();
        let mut m = Vec::new();
        let mut v = Vec::new();
        for i in model.trainable() {
            m.push(be.zeros(model.param_len(i))?);
            v.push(be.zeros(model.param_len(i))?);
        }
        Ok(Optimizer { hp, step: 0, m, v, trainable: model.trainable() })
    }

    fn check_part(&self, model: &XlmR<B>) -> Result<()> {
        if model.trainable() != self.trainable {
            bail!("internal: the optimizer was made for parameters {:?}, the model trains {:?}", self.trainable, model.trainable());
        }
        Ok(())
    }

    /// Clips the gradients to `max_norm` (PyTorch `clip_grad_norm_` semantics) and applies one
    /// AdamW update with learning rate `lr`.
    pub fn update(&mut self, model: &mut XlmR<B>, lr: f32, max_norm: Option<f32>) -> Result<UpdateInfo> {
        self.check_part(model)?;
        let be = model.backend();
        let grads: Vec<&B::Buf> = model.grads().iter().collect();
        let norm = be.sum_squares_all(&grads)?.sqrt();
        if !norm.is_finite() {
            return Ok(UpdateInfo { grad_norm: norm, skipped: true });
        }
        let clip = match max_norm {
            Some(mx) if mx > 0.0 => {
                let c = mx as f64 / (norm + 1e-6);
                (c < 1.0).then_some(c as f32)
            }
            _ => None,
        };
        self.step += 1;
        let step = self.step;
        let hp = self.hp;
        // The clipping factor is applied inside the update, as each gradient is read.
        let (m, v, start) = (&mut self.m, &mut self.v, self.trainable.start);
        let grad_scale = clip.unwrap_or(1.0);
        model.for_each_param_mut(|be, i, value, grad| {
            let j = i - start;
            be.adamw(value, grad, Moments { m: &mut m[j], v: &mut v[j] }, hp, AdamWStep { lr, step, grad_scale })
        })?;
        Ok(UpdateInfo { grad_norm: norm, skipped: false })
    }

    /// The moments as named f32 tensors (`exp_avg.<name>`, `exp_avg_sq.<name>`).
    pub fn state_tensors(&self, model: &XlmR<B>) -> Result<Vec<crate::model::weights::NamedTensor>> {
        self.check_part(model)?;
        let mut out = Vec::new();
        for (j, i) in self.trainable.clone().enumerate() {
            let (name, shape) = (&model.param_names()[i], model.param_shapes()[i].clone());
            out.push((format!("exp_avg.{name}"), shape.clone(), model.download_param(i, &self.m[j])?));
            out.push((format!("exp_avg_sq.{name}"), shape, model.download_param(i, &self.v[j])?));
        }
        Ok(out)
    }

    pub fn save(&self, model: &XlmR<B>, path: &Path) -> Result<()> {
        let t = self.state_tensors(model)?;
        let refs: Vec<(&str, &[usize], &[f32])> = t.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
        let mut meta = std::collections::HashMap::new();
        meta.insert("step".to_string(), self.step.to_string());
        crate::model::weights::write_safetensors(path, &refs, Some(meta))
    }

    pub fn load(&mut self, model: &XlmR<B>, path: &Path) -> Result<()> {
        let file = path.display().to_string();
        self.check_part(model)?;
        let mut t = crate::model::weights::read_safetensors(path)?;
        for (j, i) in self.trainable.clone().enumerate() {
            let name = &model.param_names()[i];
            let n: usize = model.param_shapes()[i].iter().product();
            for (prefix, dst) in [("exp_avg", &mut self.m[j]), ("exp_avg_sq", &mut self.v[j])] {
                let key = format!("{prefix}.{name}");
                let Some(x) = t.remove(&key) else { bail!("{file}: missing tensor `{key}`") };
                if x.data.len() != n {
                    bail!("{file}: tensor `{key}` has {} values, expected {n}", x.data.len());
                }
                *dst = model.upload_param(i, &x.data, ParamStorage::F32)?;
            }
        }
        let bytes = std::fs::read(path)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
        self.step = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{file}: metadata field `step` is missing"))?;
        Ok(())
    }
}
