// The software device's execution model: a grid runs block after block on the calling host thread;
// inside a block every CUDA thread is a fiber with its own stack, switched only at barriers, so a
// 1024-thread block costs 1024 small stacks, not 1024 OS threads.
#pragma once
#include <cstddef>
#include "../../scripts/emulate-kernels/cuda_host.h"

namespace swdev {

// A kernel's host build, called with the launch's (copied) parameter values, one pointer each.
using KernelBody = void (*)(void* const* args);

struct Launch {
    const char* name;
    KernelBody body;
    void* const* args;
    Dim3 grid, block;
    size_t dynamic_smem;
};

// Runs every block of the launch. A deadlock (threads of one block waiting at different barriers,
// or some exited while others wait) stops the process with a report, as a hang would on a GPU.
void run_grid(const Launch& launch);

// For the kernels, through kernel_rt.h.
const Dim3& current_thread_idx();
int current_flat_tid();
void block_barrier();
void warp_barrier(int warp);
void* dynamic_smem();
unsigned& current_shfl_round();

}  // namespace swdev
