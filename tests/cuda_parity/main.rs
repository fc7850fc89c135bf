//! CUDA backend vs the CPU reference (`dlm_engine::backend::cpu::*`), op by op, on fresh random
//! inputs (seed printed; replay with DLM_TEST_SEED) including odd sizes and padding: one module
//! per kernel family, named as its `kernels/<family>.cu`, its launcher and its CPU twin. Without a
//! GPU every test prints "skipped …: no CUDA driver/GPU" and passes.
//!
//! Inputs are uploaded as bf16, so the CPU reference always runs on the bf16-rounded values: the
//! measured difference is the kernels' arithmetic and their output rounding only. Tolerances
//! (method: docs/gpu.md §7; relative L2 = ‖gpu − cpu‖ / ‖cpu‖, NaN never passes):
//! - bf16 outputs of f32 arithmetic (GEMMs, GELU, LayerNorm out, attention out and dq/dk/dv with or
//!   without dropout, dlogits): 1e-2
//!   (docs/gpu.md §7: bf16 operands land between 1e-3 and 1e-2; one bf16 rounding alone is ≤ 2^-9);
//! - f32 statistics recomputed in another order (mean, rstd, lse, losses, log-probs): 1e-4 relative;
//! - ops whose arithmetic is identical on both sides (copies, embedding sums, dropout masks,
//!   the training noise (q_sample), row moves, AdamW with its un-fused f32 operations, Philox):
//!   bit-equal; the attention dropout mask is compared element by element (which probabilities
//!   are zero).
//!
//! Outputs start NaN-poisoned, so an element a kernel never writes fails the check.

mod adamw;
mod attention;
#[path = "../common/mod.rs"]
mod common;
mod elementwise;
mod embed;
mod layernorm;
mod linear;
mod noise;
mod pool;
mod rows;
mod sampler;
mod vocab;

use common::*;
use dlm_engine::backend::contract::{packed, StepParams};
use dlm_engine::backend::cpu::{self, CpuBackend};
use dlm_engine::backend::cuda::CudaBackend;
use dlm_engine::backend::{pack_gumbel, Activation, AdamW, AttnShape, Backend, ConfidenceKind, Dropout, NoiseSpec, ReparamRule, RowStats};
use dlm_engine::backend::{AdamWStep, CanvasInputs, CanvasState, LossSlots, Moments, Picks, PicksMut, VocabShape};
use dlm_engine::backend::{AttnCall, AttnSaved, Qkv, QkvGrads};
use dlm_engine::backend::{
    EmbedGrads, EmbedShape, EmbedTables, Gemm, LinearGrads, LnGrads, LnParams, LnSaved, LnStats, Residual, RowsShape,
};
use dlm_engine::rdm::noise::{coupled_t, doubled_batch, Example, Reweighting};

const TOL_BF16: f64 = 1e-2;

const TOL_STAT: f64 = 1e-4;

/// Uploads `v` as bf16 and returns the rounded values the CPU reference should use.
fn up(g: &CudaBackend, v: &[f32]) -> (dlm_engine::backend::cuda::CudaBuf, Vec<f32>) {
    (g.upload(v).unwrap(), bf16_round(v))
}

fn down(g: &CudaBackend, b: &dlm_engine::backend::cuda::CudaBuf) -> Vec<f32> {
    g.download(b).unwrap()
}

#[test]
fn starting_without_a_gpu_is_a_clean_error() {
    // Runs everywhere: on a machine without a driver this must be an Err, never a panic.
    if let Some(why) = dlm_engine::backend::cuda::unavailable_reason() {
        let err = CudaBackend::new(0).err().expect("CudaBackend::new succeeded without a GPU");
        eprintln!("no GPU ({why}); CudaBackend::new said: {err:#}");
    } else {
        assert!(CudaBackend::new(usize::MAX).is_err(), "a nonexistent device ordinal must be an error");
    }
}
