//! The RDM maths below the model, shared by the backends' kernels (and their CPU twins) and the
//! layers above: the training noise and the re-masking rule of a denoising step. It uses only
//! `data` (batches) and `rng`, so the backend can depend on it without reaching up.
//!
//! - `noise`: coupled timesteps, nested absorbing masks, the doubled batch and the RDM loss weights.
//! - `remask`: the per-canvas update rules of one reparameterized denoising step.

pub mod noise;
pub mod remask;
