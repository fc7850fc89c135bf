// The table gen_kernels.py writes from kernels/*.cu: every `extern "C" __global__` kernel with its
// module, host build and parameter sizes, so that no kernel can be missing from the device.
#pragma once
#include <cstddef>
#include "exec.h"

namespace swdev {
struct KernelInfo {
    const char* name;
    const char* module;  // the file stem: kernels/<module>.cu
    KernelBody body;
    int n_params;
    const size_t* param_sizes;
    unsigned launch_bound;  // __launch_bounds__'s maximum threads per block, or 0
};
}  // namespace swdev

extern const swdev::KernelInfo swdev_kernel_table[];
extern const size_t swdev_kernel_table_len;
