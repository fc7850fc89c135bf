//! ZeRO-1 (docs/distributed.md): each rank keeps the f32 master weights and AdamW moments of its
//! shard of the flattened trainable parameters only (`dist::split::ShardLayout`). A step
//! reduce-scatters the gradients (each rank receives the sum of its shard), clips with the global
//! norm (the shards' sums of squares summed over the ranks), updates its shard and all-gathers the
//! updated parameters into every rank's model as bf16 (the model keeps no f32 masters; a
//! checkpoint gathers them back first). The same elementwise AdamW runs on the same numbers as
//! without sharding, so only the norm's summation order differs.

use super::optim::UpdateInfo;
use crate::backend::{AdamW, AdamWStep, Backend, Moments};
use crate::dist::split::ShardLayout;
use crate::dist::Collective;
use crate::model::XlmR;
use anyhow::Result;

/// Adam's moments of every trainable parameter (stored lengths), whole.
pub struct WholeMoments {
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

pub struct ZeroShard<'a, B: Backend> {
    dist: &'a dyn Collective<B>,
    pub layout: ShardLayout,
    /// This rank's f32 masters, gradient sums and moments (`layout.shard` elements each).
    master: B::Buf,
    grad: B::Buf,
    m: B::Buf,
    v: B::Buf,
}

impl<'a, B: Backend> ZeroShard<'a, B> {
    /// The shard of this rank, its masters taken from the model's current parameters.
    pub fn new(model: &mut XlmR<B>, dist: &'a dyn Collective<B>) -> Result<Self> {
        let lens: Vec<usize> = model.trainable().map(|i| model.param_len(i)).collect();
        let layout = ShardLayout::new(&lens, dist.world());
        // Only the parameters that meet this rank's shard come to the host, one at a time: never
        // a host copy of the whole model (an XXL one is 40 GB in f32).
        let (mut shard, mut i) = (vec![0.0; layout.shard], 0);
        model.for_each_param_mut(|be, _, value, _| {
            if let Some((src, at)) = layout.overlap(i, dist.rank()) {
                shard[at..at + src.len()].copy_from_slice(&be.download(value)?[src]);
            }
            i += 1;
            Ok(())
        })?;
        let be = model.backend();
        let master = be.upload_master(&shard)?;
        let zeros = vec![0.0; layout.shard];
        Ok(ZeroShard { dist, master, grad: be.upload_f32(&zeros)?, m: be.upload_f32(&zeros)?, v: be.upload_f32(&zeros)?, layout })
    }

    /// One step: see the module's comment. `step` is the 1-based update number.
    pub fn update(&mut self, model: &mut XlmR<B>, hp: AdamW, lr: f32, step: u64, max_norm: Option<f32>) -> Result<UpdateInfo> {
        let (dist, grad) = (self.dist, &mut self.grad);
        model.with_trainable_mut(|be, _, grads| dist.reduce_scatter_sum(be, grads, grad))?;
        let be = model.backend();
        let mut squares = [be.sum_squares(&self.grad)?];
        dist.sum_host(be, &mut squares)?;
        let norm = squares[0].sqrt();
        if !norm.is_finite() {
            return Ok(UpdateInfo { grad_norm: norm, skipped: true });
        }
        let grad_scale = super::optim::clip_factor(norm, max_norm).unwrap_or(1.0);
        be.adamw(&mut self.master, &self.grad, Moments { m: &mut self.m, v: &mut self.v }, hp, AdamWStep { lr, step, grad_scale })?;
        let master = &self.master;
        // The model keeps the bf16 values alone; the f32 masters live in the shards.
        model.with_trainable_mut(|be, values, _| dist.all_gather_params(be, master, values, false))?;
        Ok(UpdateInfo { grad_norm: norm, skipped: false })
    }

    /// For a checkpoint: puts the whole f32 masters back into the model's parameters and
    /// returns the whole moments, per trainable parameter (stored lengths), gathered from every
    /// rank; every rank must call this together.
    pub fn gather_for_checkpoint(&self, model: &mut XlmR<B>) -> Result<WholeMoments> {
        let (dist, master) = (self.dist, &self.master);
        model.with_trainable_mut(|be, values, _| dist.all_gather_params(be, master, values, true))?;
        let be = model.backend();
        let m = self.layout.split(&self.dist.all_gather_host(be, &self.m)?);
        let v = self.layout.split(&self.dist.all_gather_host(be, &self.v)?);
        Ok(WholeMoments { m, v })
    }

    /// Takes this rank's shard of whole moments (per trainable parameter, stored lengths).
    pub fn load_moments(&mut self, model: &XlmR<B>, whole: &WholeMoments) -> Result<()> {
        let be = model.backend();
        self.m = be.upload_f32(&self.layout.take_shard(&whole.m, self.dist.rank()))?;
        self.v = be.upload_f32(&self.layout.take_shard(&whole.v, self.dist.rank()))?;
        Ok(())
    }
}
