//! Discrete diffusion on top of the model (docs/method.md §4): decoding. The maths it shares with the
//! kernels (noise, re-masking rules) is in `crate::rdm`.
//!
//! - `strategy`: decoding strategy strings, schedules and the masked count k.
//! - `sampler`: canvases, batching, random streams, the `Denoiser` trait and `generate`.

mod canvas;
pub mod sampler;
pub mod strategy;

pub use sampler::{generate, Denoiser, Generated, PickGroup, SamplerConfig, SpecialIds};
pub use strategy::{Confidence, Remask, Schedule, Strategy};
