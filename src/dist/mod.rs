//! Data-parallel training over several processes, one per GPU (docs/distributed.md): the rank
//! environment (`env`), the rendezvous and failure-watching control channel (`control`), the
//! launcher behind `train --gpus` (`launch`), NCCL (`nccl`), the collectives the trainer calls
//! (`collective`) and how a batch is shared among the ranks (`split`).
//!
//! Layering: below `train` and `cli`, above `backend`.

pub mod collective;
pub mod control;
pub mod env;
pub mod launch;
pub mod nccl;
pub mod split;

pub use collective::{Collective, Solo};
pub use env::RankEnv;
