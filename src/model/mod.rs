//! The XLM-R masked LM (both LayerNorm placements), written once against `Backend`.
//!
//! - `config`: HF `config.json` and presets.
//! - `weights`: safetensors loading/saving by HF tensor names (f32/f16/bf16, tied decoder).
//! - `xlmr`: parameters, forward and backward.

pub mod config;
pub mod weights;
pub mod xlmr;

pub use config::{Arch, ModelConfig};
pub use xlmr::{CanvasSlots, CanvasStep, DecodeSpec, ParamStorage, XlmR};

/// A right-padded batch of token ids, `batch × seq`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub ids: Vec<i32>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch {
    /// Pads `rows` on the right with `pad` to the longest row.
    pub fn from_rows(rows: &[Vec<i32>], pad: i32) -> Self {
        let seq = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * seq);
        for r in rows {
            ids.extend_from_slice(r);
            ids.extend(std::iter::repeat_n(pad, seq - r.len()));
        }
        Batch { ids, batch: rows.len(), seq }
    }

    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }
}

/// The rows (flat `b·seq + t` positions) that take part in the loss, their target ids and weights.
/// The model returns `Σ_r weight_r · CE_r`, so the caller's weights carry every normalisation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossRows {
    pub rows: Vec<i32>,
    pub targets: Vec<i32>,
    pub weights: Vec<f32>,
}

/// How the sampler picks a token at each scored position.
#[derive(Clone, Debug, PartialEq)]
pub struct PickOpts {
    /// Ids never emitted (the sampler forbids `<mask>`; XL/XXL's unused rows are always excluded).
    pub forbid: Vec<i32>,
    pub temperature: f32,
    /// `None` = argmax; `Some(seed)` = sample (Gumbel-max) with noise of that seed.
    pub sample_seed: Option<u64>,
}
