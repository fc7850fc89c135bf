//! `dlm-engine demo`: the embedded default job (task generator in `task`).

pub mod task;
