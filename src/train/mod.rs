//! Diffusive adaptation: the training loop and what it needs.

pub mod optim;
pub mod schedule;
