// Host emulation of the CUDA execution model for kernel-logic checks: one std::thread per CUDA
// thread, std::barrier for __syncthreads and for warp-synchronous shuffles.
#include <barrier>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>
#include <algorithm>
#include <memory>
#define __device__
#define __host__
#define __forceinline__ inline
#define __global__
#define __shared__ static
#define __restrict__
struct Dim3 { unsigned x = 1, y = 1, z = 1; };
thread_local Dim3 threadIdx;
inline Dim3 blockIdx, blockDim, gridDim;
inline std::barrier<>* g_block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> g_warp_barriers;
inline unsigned long long g_warp_buf[64][32];
inline std::mutex g_atomic_mutex;
inline int flat_tid() { return threadIdx.x + threadIdx.y * blockDim.x; }
inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }
template <typename T> T shfl_impl(T v, int src_lane) {
    int t = flat_tid(), w = t >> 5, lane = t & 31;
    unsigned long long bits = 0; memcpy(&bits, &v, sizeof(T));
    g_warp_buf[w][lane] = bits;
    g_warp_barriers[w]->arrive_and_wait();
    unsigned long long got = g_warp_buf[w][src_lane & 31];
    g_warp_barriers[w]->arrive_and_wait();
    T r; memcpy(&r, &got, sizeof(T)); return r;
}
template <typename T> T __shfl_xor_sync(unsigned, T v, int o) { return shfl_impl(v, (flat_tid() & 31) ^ o); }
template <typename T> T __shfl_sync(unsigned, T v, int src) { return shfl_impl(v, src); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
template <typename T> T atomicAdd(T* p, T v) { std::lock_guard<std::mutex> g(g_atomic_mutex); T o = *p; *p = o + v; return o; }
using std::min; using std::max;
// dynamic shared memory arrays by the names the kernels declare
float smem[65536]; float row[65536]; float part[65536]; int forb[65536];

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
    }
}
