//! dlm-engine: train and sample reparameterized absorbing discrete diffusion language models
//! (RDM, Ye et al. 2023) on XLM-R backbones, with a CPU reference backend and CUDA kernels.

pub mod backend;
pub mod cli;
pub mod data;
pub mod diffusion;
pub mod dist;
pub mod metrics;
pub mod model;
pub mod rdm;
pub mod rng;
pub mod tokenizer;
pub mod train;
pub mod util;
