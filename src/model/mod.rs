//! The XLM-R masked LM (both LayerNorm placements), written once against `Backend`.
//!
//! - `config`: HF `config.json` and presets.
//! - `weights`: safetensors loading/saving by HF tensor names (f32/f16/bf16, tied decoder).
//! - `xlmr`: parameters, forward and backward; `xlmr/length.rs` the length predictor.

pub mod config;
pub mod weights;
pub mod xlmr;

pub use config::{Arch, ModelConfig};
pub use xlmr::{length_class, CanvasSlots, CanvasStep, DecodeSpec, ParamStorage, Part, XlmR, LENGTH_CLASSES};
// The model takes its inputs in the data layer's types.
pub use crate::data::{Batch, LossRows};

/// How the sampler picks a token at each scored position.
#[derive(Clone, Debug, PartialEq)]
pub struct PickOpts {
    /// Ids never emitted (the sampler forbids `<mask>`; XL/XXL's unused rows are always excluded).
    pub forbid: Vec<i32>,
    pub temperature: f32,
    /// `None` = argmax; `Some(seed)` = sample (Gumbel-max) with noise of that seed.
    pub sample_seed: Option<u64>,
}
