//! Diffusive adaptation: the training loop and what it needs.

pub mod buckets;
pub mod checkpoint;
pub mod defaults;
pub mod length_stage;
pub mod memory_plan;
pub mod optim;
pub mod run_dir;
pub mod schedule;
pub mod trainer;
pub mod zero;

pub use trainer::{AdamWSettings, BatchSource, Summary, TrainConfig, Trainer};
