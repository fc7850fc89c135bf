// Stands in for CUDA's <mma.h> in the emulator (run.sh puts this directory first on the include
// path): nvcuda::wmma is emulated in emu.h, which main.cpp includes before the kernels.
#pragma once
