//! HF's initialisation of a new masked LM, drawn one tensor at a time: normal(0, 0.02) weights
//! and embeddings (the padding rows zero), zero biases, unit LayerNorms. One host stream draws
//! the tensors in `param_specs` order, so `init` can write a model straight to disk tensor by
//! tensor and get the same values as a model built in memory (`XlmR::random`).

use super::config::ModelConfig;
use super::shards::{write_sharded, TensorSpec};
use super::weights::{param_specs, write_config};
use crate::rng::Rng;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Draws the parameters of a new model in `param_specs` order.
pub struct RandomInit<'a> {
    cfg: &'a ModelConfig,
    rng: Rng,
}

impl<'a> RandomInit<'a> {
    pub fn new(cfg: &'a ModelConfig, seed: u64) -> Self {
        RandomInit { cfg, rng: Rng::new(seed, 0x1417) }
    }

    /// The values of the next parameter, `name` of `shape` (call in `param_specs` order), in a
    /// vector with room for `capacity` values.
    pub fn next(&mut self, name: &str, shape: &[usize], capacity: usize) -> Vec<f32> {
        let n: usize = shape.iter().product();
        let mut d = Vec::with_capacity(capacity.max(n));
        if name.ends_with("LayerNorm.weight") || name.ends_with("layer_norm.weight") {
            d.resize(n, 1.0);
        } else if shape.len() == 1 {
            d.resize(n, 0.0);
        } else {
            d.extend((0..n).map(|_| 0.02 * self.rng.normal()));
            if name.ends_with("word_embeddings.weight") || name.ends_with("position_embeddings.weight") {
                let h = shape[1];
                d[self.cfg.pad_id as usize * h..][..h].fill(0.0);
            }
        }
        d
    }
}

/// Writes a new random model (`config.json` and its weights, sharded past `max_shard_size`) into
/// `dir`, generating and writing one tensor at a time: the values `XlmR::random` gives, without
/// the whole model in memory. Returns the weights files written.
pub fn write_random(dir: &Path, cfg: &ModelConfig, seed: u64, max_shard_size: u64) -> Result<Vec<PathBuf>> {
    cfg.validate("the model configuration")?;
    write_config(dir, cfg, true)?;
    let specs: Vec<TensorSpec> = param_specs(cfg, false).into_iter().map(|(n, s)| TensorSpec::f32(n, s)).collect();
    let mut init = RandomInit::new(cfg, seed);
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_sharded(dir, specs, max_shard_size, meta, |_, s| Ok(init.next(&s.name, &s.shape, 0)))
}
