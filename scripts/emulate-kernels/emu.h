// The kernel-logic checks' execution model (run.sh): one std::thread per CUDA thread, std::barrier
// for __syncthreads and for warp-synchronous shuffles; the device language itself is cuda_host.h.
#include <barrier>
#include <functional>
#include <memory>
#include <thread>
#include "cuda_host.h"
thread_local Dim3 threadIdx;
inline std::barrier<>* g_block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> g_warp_barriers;
inline int flat_tid() { return threadIdx.x + threadIdx.y * blockDim.x; }
inline void emu_block_barrier() { g_block_barrier->arrive_and_wait(); }
inline void emu_warp_barrier(int w) { g_warp_barriers[w]->arrive_and_wait(); }
inline unsigned& emu_shfl_round() { thread_local unsigned round = 0; return round; }
// dynamic shared memory arrays by the names the kernels declare
float smem[65536]; float row[65536]; float part[65536]; int forb[65536]; float ranked[65536];
alignas(128) unsigned char attn_smem[1 << 18];

template <typename F>
void launch(Dim3 grid, Dim3 block, F&& body) {
    blockDim = block; gridDim = grid;
    int nthreads = block.x * block.y;
    for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = {bx, by, bz};
        std::barrier<> bb(nthreads);
        g_block_barrier = &bb;
        g_warp_barriers.clear();
        for (int w = 0; w < (nthreads + 31) / 32; ++w) g_warp_barriers.emplace_back(new std::barrier<>(std::min(32, nthreads - 32 * w)));
        std::vector<std::thread> ts;
        for (int t = 0; t < nthreads; ++t)
            ts.emplace_back([&, t] { threadIdx = {(unsigned)(t % block.x), (unsigned)(t / block.x), 0}; body(); });
        for (auto& th : ts) th.join();
        // Stores after a kernel's last barrier still land, as on the GPU.
        for (int w = 0; w < (nthreads + 31) / 32; ++w) flush_warp_stores(w);
    }
}
