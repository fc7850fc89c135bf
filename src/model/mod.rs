//! The XLM-R masked LM (both LayerNorm placements), written once against `Backend`.
//!
//! - `config`: HF `config.json` and presets.
//! - `weights`: the parameter list by HF tensor names (tied decoder), matched to a file's tensors.
//! - `shards`: the weights on disk, one `model.safetensors` or transformers' shards with an index,
//!   read (f32/f16/bf16) and written one tensor at a time.
//! - `random_init`: HF's initialisation, tensor by tensor (so `init` streams to disk).
//! - `xlmr`: parameters, forward and backward; `xlmr/length.rs` the length predictor.
//! - `pytorch`: PyTorch `pytorch_model.bin` checkpoints (zip + a strict unpickler), for `convert`.

pub mod config;
pub mod pytorch;
pub mod random_init;
pub mod shards;
pub mod weights;
pub mod xlmr;

pub use config::{Arch, ModelConfig};
pub use xlmr::{
    length_class, CanvasSlots, CanvasStep, DecodeSpec, GradsReady, LengthGuess, LoadPlan, ParamStorage, Part, SaveOpts, XlmR,
    LENGTH_CLASSES,
};
// The model takes its inputs in the data layer's types.
use crate::backend::ConfidenceKind;
pub use crate::data::{Batch, LossRows};

/// How the sampler picks a token at each scored position.
#[derive(Clone, Debug, PartialEq)]
pub struct PickOpts {
    /// Ids never emitted (the sampler forbids `<mask>`; XL/XXL's unused rows are always excluded).
    pub forbid: Vec<i32>,
    pub temperature: f32,
    /// `None` = argmax; `Some(seed)` = sample (Gumbel-max) with noise of that seed.
    pub sample_seed: Option<u64>,
    /// Also compute this confidence of each row (`RowStats::confidence`).
    pub confidence: Option<ConfidenceKind>,
    /// Unsupervised classifier-free guidance of this scale: the batch holds each canvas twice,
    /// rows `[0, B/2)` as they are and rows `[B/2, B)` with the prompt masked, the picked rows
    /// are in the first half, and the pick is over `uncond + (s + 1)·(cond − uncond)`.
    pub cfg_scale: Option<f32>,
}

impl PickOpts {
    /// The argmax (or a sample, with `sample_seed`) with `forbid` excluded, nothing else.
    pub fn plain(forbid: Vec<i32>, temperature: f32, sample_seed: Option<u64>) -> Self {
        PickOpts { forbid, temperature, sample_seed, confidence: None, cfg_scale: None }
    }
}
