// The contract between the kernels and the Rust side (src/backend/contract.rs): the layouts of
// the packed i32 arrays the host fills and the codes and constants both sides use. The Rust
// module mirrors every definition here and a test (`contract::tests`) compares them by name, so a
// change on one side that the other does not follow fails before any GPU run.
#pragma once

// One canvas of `reparam_step` (Rust `CanvasMeta`): i32 fields per canvas, in this order.
#define DLM_CANVAS_FIELDS 3
#define DLM_CANVAS_FIRST 0  // the canvas's first slot in the flat slot arrays
#define DLM_CANVAS_LEN 1    // its slot count n
#define DLM_CANVAS_POS0 2   // the flat position in the model's input ids of its slot 0

// One canvas's inputs for one step of `reparam_step` (Rust `StepParams`).
#define DLM_STEP_FIELDS 8
#define DLM_STEP_K 0          // slots the lowest set may hold
#define DLM_STEP_STREAM_HI 1  // the ranking noise's Philox stream, high then low 32 bits
#define DLM_STEP_STREAM_LO 2
#define DLM_STEP_SCALE 3  // the ranking noise's scale, f32 bits
#define DLM_STEP_LO 4     // the window of slots the step works on (a block): [lo, hi) of the canvas
#define DLM_STEP_HI 5
#define DLM_STEP_MODE 6  // DLM_MODE_*
#define DLM_STEP_CUT 7   // the threshold mode's cut in the ranked values' scale, f32 bits

// What a step does in its window (Rust `StepMode`).
#define DLM_MODE_TOPK 0       // the reparameterized top-k re-masking
#define DLM_MODE_THRESHOLD 1  // commit every masked slot ranked >= cut, at least the best one

// The score every non-target position has in the ranking (rdm::remask::NON_TARGET_SCORE).
#define DLM_NON_TARGET_SCORE 1000.0f

// The RDM reweighting codes of `q_sample_mask` (rdm::noise::Reweighting).
#define DLM_REWEIGHT_LINEAR 0
#define DLM_REWEIGHT_RECIPROCAL 1
#define DLM_REWEIGHT_CONSTANT 2
