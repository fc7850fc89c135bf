// What the host build of kernels/*.cu sees in place of the CUDA device runtime: cuda_host.h's
// device language on the software device's fibers (exec.h). gen_kernels.py includes this first.
#pragma once
#include "exec.h"

#define threadIdx (swdev::current_thread_idx())
inline int flat_tid() { return swdev::current_flat_tid(); }
inline void emu_block_barrier() { swdev::block_barrier(); }
inline void emu_warp_barrier(int w) { swdev::warp_barrier(w); }
inline unsigned& emu_shfl_round() { return swdev::current_shfl_round(); }
