//! The CUDA backend (see issue: CUDA backend part 1). Placeholder module so the tree builds.
