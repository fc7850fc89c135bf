//! AdamW over the model's trainable parameters (`XlmR::trainable`: the backbone, or the length
//! predictor alone), with global gradient-norm clipping and a skipped step when the gradients
//! are not finite; whole on every rank, or sharded over the ranks (ZeRO-1, `super::zero`).

use super::zero::{WholeMoments, ZeroShard};
use crate::backend::{AdamW, Backend};
use crate::backend::{AdamWStep, Moments};
use crate::dist::Collective;
use crate::model::{ParamStorage, XlmR};
use anyhow::{bail, Result};
use std::path::Path;

pub struct Optimizer<'a, B: Backend> {
    pub hp: AdamW,
    /// Number of updates applied so far (1-based bias correction uses `step + 1`).
    pub step: u64,
    /// Moments of the trainable parameters: `m[j]` belongs to parameter `trainable.start + j`.
    m: Vec<B::Buf>,
    v: Vec<B::Buf>,
    trainable: std::ops::Range<usize>,
    /// ZeRO-1: this rank's shard of the masters and moments (`m` and `v` are then empty).
    zero: Option<ZeroShard<'a, B>>,
    /// ZeRO-1: the whole moments gathered for a checkpoint (`gather`).
    gathered: Option<WholeMoments>,
}

/// What one `update` did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateInfo {
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// True when the norm was NaN/inf and nothing was changed.
    pub skipped: bool,
}

/// Gradient clipping's factor for a global norm (PyTorch `clip_grad_norm_`): `None` when the
/// norm is within `max_norm` or clipping is off.
pub fn clip_factor(norm: f64, max_norm: Option<f32>) -> Option<f32> {
    match max_norm {
        Some(mx) if mx > 0.0 => {
            let c = mx as f64 / (norm + 1e-6);
            (c < 1.0).then_some(c as f32)
        }
        _ => None,
    }
}

impl<'a, B: Backend> Optimizer<'a, B> {
    /// ZeRO-1 over the ranks of `dist` (more than one): this rank keeps its shard only.
    pub fn sharded(model: &mut XlmR<B>, hp: AdamW, dist: &'a dyn Collective<B>) -> Result<Self> {
        let zero = Some(ZeroShard::new(model, dist)?);
        Ok(Optimizer { hp, step: 0, m: Vec::new(), v: Vec::new(), trainable: model.trainable(), zero, gathered: None })
    }

    pub fn is_sharded(&self) -> bool {
        self.zero.is_some()
    }

    /// ZeRO-1: before a checkpoint, puts the f32 masters back into the model and collects the
    /// whole moments for `state_tensors`/`save`; every rank calls it together. Nothing to do for
    /// an unsharded optimizer.
    pub fn gather(&mut self, model: &mut XlmR<B>) -> Result<()> {
        if let Some(z) = &self.zero {
            self.gathered = Some(z.gather_for_checkpoint(model)?);
        }
        Ok(())
    }

    pub fn new(model: &XlmR<B>, hp: AdamW) -> Result<Self> {
        let be = model.backend();
        let mut m = Vec::new();
        let mut v = Vec::new();
        for i in model.trainable() {
            m.push(be.zeros(model.param_len(i))?);
            v.push(be.zeros(model.param_len(i))?);
        }
        Ok(Optimizer { hp, step: 0, m, v, trainable: model.trainable(), zero: None, gathered: None })
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
        self.gathered = None;
        if let Some(z) = self.zero.as_mut() {
            let info = z.update(model, self.hp, lr, self.step + 1, max_norm)?;
            self.step += u64::from(!info.skipped);
            return Ok(info);
        }
        let be = model.backend();
        let grads: Vec<&B::Buf> = model.grads().iter().collect();
        let norm = be.sum_squares_all(&grads)?.sqrt();
        if !norm.is_finite() {
            return Ok(UpdateInfo { grad_norm: norm, skipped: true });
        }
        let clip = clip_factor(norm, max_norm);
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
        if self.zero.is_some() && self.gathered.is_none() {
            bail!("internal: a sharded optimizer's moments must be gathered before they are saved");
        }
        let mut out = Vec::new();
        for (j, i) in self.trainable.clone().enumerate() {
            let (name, shape) = (&model.param_names()[i], model.param_shapes()[i].clone());
            let n: usize = shape.iter().product();
            let (m, v) = match &self.gathered {
                Some(w) => (w.m[j][..n].to_vec(), w.v[j][..n].to_vec()),
                None => (model.download_param(i, &self.m[j])?, model.download_param(i, &self.v[j])?),
            };
            out.push((format!("exp_avg.{name}"), shape.clone(), m));
            out.push((format!("exp_avg_sq.{name}"), shape, v));
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
        let mut whole = WholeMoments { m: Vec::new(), v: Vec::new() };
        for (j, i) in self.trainable.clone().enumerate() {
            let name = &model.param_names()[i];
            let n: usize = model.param_shapes()[i].iter().product();
            for prefix in ["exp_avg", "exp_avg_sq"] {
                let key = format!("{prefix}.{name}");
                let Some(x) = t.remove(&key) else { bail!("{file}: missing tensor `{key}`") };
                if x.data.len() != n {
                    bail!("{file}: tensor `{key}` has {} values, expected {n}", x.data.len());
                }
                let mut data = x.data;
                if self.zero.is_none() {
                    let dst = if prefix == "exp_avg" { &mut self.m[j] } else { &mut self.v[j] };
                    *dst = model.upload_param(i, &data, ParamStorage::F32)?;
                } else {
                    // The stored length (a padded vocabulary) with zeros, as the shard layout has it.
                    data.resize(model.param_len(i), 0.0);
                    if prefix == "exp_avg" {
                        whole.m.push(data)
                    } else {
                        whole.v.push(data)
                    }
                }
            }
        }
        if let Some(z) = self.zero.as_mut() {
            z.load_moments(model, &whole)?;
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
