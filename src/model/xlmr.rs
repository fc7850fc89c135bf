//! XLMRobertaForMaskedLM / XLMRobertaXLForMaskedLM: parameters, forward and backward.

use super::{Batch, LossRows, ModelConfig, PickOpts};
use crate::backend::{Backend, Dropout, RowStats};
use anyhow::Result;
use std::path::Path;

/// One named parameter with its gradient (allocated on first use of `loss_and_grad`).
pub struct Param<B: Backend> {
    /// HF name without the `roberta.` prefix handling: e.g. `roberta.encoder.layer.0.attention.self.query.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub value: B::Buf,
    pub grad: Option<B::Buf>,
}

pub struct XlmR<B: Backend> {
    backend: B,
    cfg: ModelConfig,
    params: Vec<Param<B>>,
}

impl<B: Backend> XlmR<B> {
    /// Loads `config.json` and `model.safetensors` from an HF checkpoint directory.
    pub fn load(backend: B, dir: &Path) -> Result<Self> {
        let _ = (backend, dir);
        todo!()
    }

    /// A randomly initialised model (HF's init: normal(0, 0.02) weights, zero biases, unit LN).
    pub fn random(backend: B, cfg: ModelConfig, seed: u64) -> Result<Self> {
        let _ = (backend, cfg, seed);
        todo!()
    }

    /// Writes `config.json` and `model.safetensors` (f32, HF names, tied decoder omitted).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let _ = dir;
        todo!()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// All parameters in a fixed order (the order of HF's `named_parameters`).
    pub fn params(&self) -> &[Param<B>] {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut [Param<B>] {
        &mut self.params
    }

    /// Logits (`[rows.len(), vocab_size]`, row-major) at the flat positions `rows` of `batch`.
    pub fn logits(&mut self, batch: &Batch, rows: &[i32]) -> Result<Vec<f32>> {
        let _ = (batch, rows);
        todo!()
    }

    /// The sampler's pick (token and its log-prob) at the flat positions `rows`.
    pub fn pick(&mut self, batch: &Batch, rows: &[i32], opts: &PickOpts) -> Result<RowStats> {
        let _ = (batch, rows, opts);
        todo!()
    }

    /// Forward and backward of `Σ_r weight_r · CE(logits[rows[r]], targets[r])`; gradients
    /// accumulate into each `Param::grad` (call `zero_grads` between optimizer steps).
    /// Returns the weighted sum of the per-row losses.
    pub fn loss_and_grad(&mut self, batch: &Batch, loss: &LossRows, dropout: Dropout, label_smoothing: f32) -> Result<f32> {
        let _ = (batch, loss, dropout, label_smoothing);
        todo!()
    }

    pub fn zero_grads(&mut self) -> Result<()> {
        for p in &mut self.params {
            if let Some(g) = p.grad.as_mut() {
                self.backend.fill_zero(g)?;
            }
        }
        Ok(())
    }
}
