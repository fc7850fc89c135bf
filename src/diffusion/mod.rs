//! Discrete diffusion on top of the model (method.md §3–4).
//!
//! - `noise`: the training noise (coupled timesteps, nested masks) and the RDM loss weights.
//! - `strategy`: decoding strategy strings, schedules and the masked count k.
//! - `step`: the per-canvas update rules of one denoising step.
//! - `sampler`: canvases, batching, random streams, the `Denoiser` trait and `generate`.

pub mod noise;
pub mod sampler;
pub mod step;
pub mod strategy;

pub use sampler::{generate, Denoiser, Generated, PickGroup, SamplerConfig, SpecialIds};
pub use strategy::{Remask, Schedule, Strategy};
