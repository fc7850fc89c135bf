//! Training and sampling data: JSONL records -> token sequences -> padded batches.
//!
//! - `jsonl`: records `{"src","tgt"}` / `{"inputs","targets"}` with `FILE:LINE` errors.
//! - `layout`: the one-stream layout `[<s>] source target [</s>]` and the sampling canvas.
//! - `batch`: token-budget (or N-sequence) batches, per-epoch shuffled order, resumable sampler state.
//! - `mixture`: several sources sampled by ratio per sequence (Flan-style), resumable.

pub mod batch;
pub mod jsonl;
pub mod layout;
pub mod mixture;

pub use batch::{
    pad_batch, plan_batches, plan_batches_with, Batch, BatchPlan, BatchSampler, Budget, ExampleBatches, LossRows, SamplerState,
};
pub use jsonl::{read_jsonl, read_jsonl_files, JsonlOptions, JsonlReader, Keys, Record, SkipReport};
pub use layout::{build_examples, layout_pair, prompt_canvas, Example, LayoutSummary, Overlong};
pub use mixture::{Mixture, MixtureState, Source};
