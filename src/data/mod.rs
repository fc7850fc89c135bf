//! Training and sampling data: JSONL records -> token sequences -> padded batches.
//!
//! - `jsonl`: records `{"src","tgt"}` / `{"inputs","targets"}` with `FILE:LINE` errors.
//! - `layout`: the one-stream layout `[<s>] source target [</s>]` and the sampling canvas.
//! - `batch`: token-budget batches, per-epoch shuffled order, resumable sampler state.

pub mod batch;
pub mod jsonl;
pub mod layout;

pub use batch::{pad_batch, plan_batches, Batch, BatchPlan, BatchSampler, ExampleBatches, LossRows, SamplerState};
pub use jsonl::{read_jsonl, read_jsonl_files, JsonlOptions, JsonlReader, Keys, Record, SkipReport};
pub use layout::{build_examples, layout_pair, prompt_canvas, Example, LayoutSummary, Overlong};
