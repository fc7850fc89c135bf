//! The discrete diffusion parts: training noise and loss weights (`noise`).

pub mod noise;
