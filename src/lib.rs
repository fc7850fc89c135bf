//! dlm-engine: train and sample reparameterized absorbing discrete diffusion language models
//! (RDM, Ye et al. 2023) on XLM-R backbones, with a CPU reference backend and CUDA kernels.

pub mod backend;
pub mod cli;
pub mod diffusion;
pub mod model;
pub mod rng;
