// The CUDA device language on the host, shared by the two executions of the kernels without a GPU:
// the kernel-logic checks (scripts/emulate-kernels, one std::thread per CUDA thread) and the
// software device (tests/swdev, one fiber per CUDA thread). An execution model defines, before
// including this header: `threadIdx`, and the hooks below; this header gives the intrinsics,
// barriers, warp shuffles and the nvcuda::wmma emulation on top of them.
#pragma once
#pragma GCC system_header  // the macros below redefine cuda_bf16.h's on purpose
#include <cuda_bf16.h>  // first: the macros below replace its host definitions of __device__ etc.
#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>
#include <algorithm>
#include <cstdint>
#include <type_traits>
#define __device__
#define __host__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__
// __align__ keeps cuda_bf16.h's host meaning (an alignment attribute), so that a local array
// declared __align__(8) and read through a uint2 is aligned here as on the GPU.
struct Dim3 { unsigned x = 1, y = 1, z = 1; };
inline Dim3 blockIdx, blockDim, gridDim;
// The execution model's hooks: the calling CUDA thread's index in its block, and barriers over the
// whole block and over one warp (the threads of warp w).
inline int flat_tid();
inline void emu_block_barrier();
inline void emu_warp_barrier(int w);
// The calling thread's count of shuffles so far (shfl_impl's buffer parity).
inline unsigned& emu_shfl_round();
inline unsigned long long g_warp_buf[2][64][32];
inline std::mutex g_atomic_mutex;
// wmma::store_matrix_sync's tiles, held back until the warp's next __syncwarp or __syncthreads
// (see the wmma emulation below).
struct PendingTile { float* p; unsigned ldm; bool row_major; float v[16][16]; };
inline std::vector<PendingTile> g_warp_pending[64];
inline void flush_warp_stores(int w) {
    for (const auto& t : g_warp_pending[w])
        for (int i = 0; i < 16; ++i) for (int j = 0; j < 16; ++j) (t.row_major ? t.p[i * t.ldm + j] : t.p[j * t.ldm + i]) = t.v[i][j];
    g_warp_pending[w].clear();
}
inline void __syncthreads() {
    if ((flat_tid() & 31) == 0) flush_warp_stores(flat_tid() >> 5);
    emu_block_barrier();
}
inline void __syncwarp(unsigned = 0xffffffffu) {
    const int w = flat_tid() >> 5;
    emu_warp_barrier(w);
    if ((flat_tid() & 31) == 0) flush_warp_stores(w);
    emu_warp_barrier(w);
}
// One warp barrier per shuffle: the exchange slots alternate between two buffers, and a lane can
// only write a buffer again two shuffles later, after the barrier of the shuffle between, which
// every lane reaches only once it has read this one. (All lanes of a warp take the same shuffles,
// as the full-mask intrinsics require.)
template <typename T> T shfl_impl(T v, int src_lane) {
    int t = flat_tid(), w = t >> 5, lane = t & 31;
    unsigned& round = emu_shfl_round();
    unsigned long long (&buf)[32] = g_warp_buf[round++ & 1][w];
    unsigned long long bits = 0; memcpy(&bits, &v, sizeof(T));
    buf[lane] = bits;
    emu_warp_barrier(w);
    unsigned long long got = buf[src_lane & 31];
    T r; memcpy(&r, &got, sizeof(T)); return r;
}
template <typename T> T __shfl_xor_sync(unsigned, T v, int o) { return shfl_impl(v, (flat_tid() & 31) ^ o); }
template <typename T> T __shfl_sync(unsigned, T v, int src) { return shfl_impl(v, src); }
template <typename T> T __shfl_up_sync(unsigned, T v, unsigned d) { const int lane = flat_tid() & 31; return shfl_impl(v, lane >= (int)d ? lane - (int)d : lane); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
template <typename T> T atomicAdd(T* p, T v) { std::lock_guard<std::mutex> g(g_atomic_mutex); T o = *p; *p = o + v; return o; }
using std::min; using std::max;

// nvcuda::wmma, only what the attention kernels use: 16x16x16 fragments (bf16 matrix_a/matrix_b,
// f32 accumulator). Every emulated thread holds the whole logical tile (row-major, as f32) in its
// fragment, so loads and mma_sync are thread-local. store_matrix_sync only queues the tile (lane
// 0's copy); the warp's next __syncwarp or __syncthreads writes it. Since only lane 0's copy is
// ever stored and the kernels never touch fragment elements, the other lanes check the operands'
// alignment and skip the arithmetic (32 times less work). On the GPU the other lanes are
// guaranteed to see a store only after such a barrier, so a missing one shows here every time: the
// lanes read the old contents. The alignment and stride rules of the CUDA documentation (pointer
// 256-bit aligned, ldm a multiple of 16 bytes) are checked, since the GPU would misbehave.
namespace nvcuda { namespace wmma {
struct matrix_a {}; struct matrix_b {}; struct accumulator {};
struct row_major {}; struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "emulated: 16x16x16 only");
    static_assert(std::is_same_v<Use, accumulator> ? std::is_same_v<T, float> && std::is_void_v<Layout>
                                                   : std::is_same_v<T, __nv_bfloat16> && !std::is_void_v<Layout>, "emulated: bf16 a/b, f32 accumulator");
    float v[16][16];
};
template <typename T> void check_operand(const T* p, unsigned ldm, const char* what) {
    if ((reinterpret_cast<uintptr_t>(p) & 31) || (ldm * sizeof(T)) % 16) {
        fprintf(stderr, "wmma %s: pointer %p or ldm %u breaks the alignment rules\n", what, (const void*)p, ldm); abort();
    }
}
inline float elem(float x) { return x; }
inline float elem(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename Use, typename T, typename L> void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, float x) {
    for (auto& row : f.v) for (auto& e : row) e = elem(T(x));
}
template <typename Use, typename T, typename L> void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
    check_operand(p, ldm, "load");
    if (flat_tid() & 31) return;
    for (int i = 0; i < 16; ++i) for (int j = 0; j < 16; ++j) f.v[i][j] = elem(std::is_same_v<L, row_major> ? p[i * ldm + j] : p[j * ldm + i]);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t l) {
    check_operand(p, ldm, "load");
    if (flat_tid() & 31) return;
    for (int i = 0; i < 16; ++i) for (int j = 0; j < 16; ++j) f.v[i][j] = l == mem_row_major ? p[i * ldm + j] : p[j * ldm + i];
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
    check_operand(p, ldm, "store");
    if ((flat_tid() & 31) != 0) return;
    PendingTile t{p, ldm, l == mem_row_major, {}};
    memcpy(t.v, f.v, sizeof t.v);
    g_warp_pending[flat_tid() >> 5].push_back(t);
}
// bf16 x bf16 products are exact in f32; the sums round in f32 (in another order than the GPU's).
template <typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
              const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
    if (flat_tid() & 31) return;
    float out[16][16];
    for (int i = 0; i < 16; ++i) for (int j = 0; j < 16; ++j) {
        float s = c.v[i][j];
        for (int k = 0; k < 16; ++k) s += a.v[i][k] * b.v[k][j];
        out[i][j] = s;
    }
    memcpy(d.v, out, sizeof out);
}
} }
