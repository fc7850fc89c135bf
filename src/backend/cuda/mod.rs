//! The CUDA backend (see issue: CUDA backend part 1). Placeholder module so the tree builds.

use anyhow::{bail, Result};

/// Opens CUDA device `ordinal`.
pub fn open(ordinal: usize) -> Result<crate::backend::cpu::CpuBackend> {
    bail!("--device cuda:{ordinal}: this build has no CUDA backend yet")
}
