// What the attention forward (attention.cu) and backward (attention_bwd.cu) share: the block
// geometry, the shared-memory tiles, the two tensor-core products and the dropout decision.
//
// The four products (S = Q.K^T, O += P.V; dP = dO.V^T, dQ += dS.K, dK += dS^T.Q, dV += P^T.dO)
// run on tensor cores through WMMA: bf16 16x16x16 fragments, f32 accumulators. Fragment layouts
// are opaque, so every row-wise step (masking, softmax, dropout) works on f32 tiles staged in
// shared memory, with two lanes per row; the code never touches a fragment's elements.
#pragma once
#include <mma.h>
#include "common.cuh"

namespace wmma = nvcuda::wmma;

// A block is ATT_WARPS warps; each warp owns 16 rows (one fragment high: query rows in the forward
// and the dQ pass, key rows in the dK/dV pass), so a block owns ATT_KT rows of one (batch, head).
// The other side streams through shared memory in tiles of ATT_KT rows. At XLM-R's seq 128 that is
// two tiles, and a block's K/V tile feeds 4 warps' worth of products.
#define ATT_WARPS 4
#define ATT_KT 64
#define ATT_NT (ATT_KT / 16)
// Row strides, in elements, of a warp's 16 x ATT_KT f32 score tile and of the bf16 probability
// tiles that overwrite it. 4 floats / 8 bf16 past a multiple of 32 banks: rows start 16 bytes
// apart in the banks, so fragment loads and stores do not conflict.
#define ATT_LDS (ATT_KT + 4)
#define ATT_LDP (ATT_KT + 8)
// A warp's score area: the f32 scores, or two bf16 probability tiles (the dK/dV pass keeps both
// P^T and dS^T), whichever is larger.
#define ATT_SCORE_BYTES (16 * ATT_LDS * 4 > 2 * 16 * ATT_LDP * 2 ? 16 * ATT_LDS * 4 : 2 * 16 * ATT_LDP * 2)

// The head as the fragments see it: D dims zero-padded to nc 16-wide chunks; bf16 tiles have row
// stride ld and f32 accumulator tiles row stride lo (padded as ATT_LDP and ATT_LDS are).
struct AttnDims {
    int D, nc, ld, lo;
};

__device__ __forceinline__ AttnDims attn_dims(int D) {
    const int dp = (D + 15) & ~15;
    return AttnDims{D, dp >> 4, dp + 8, dp + 4};
}

// Dynamic shared memory is carved front to back; every piece is a multiple of 128 bytes (or the
// last), which keeps each fragment pointer 32-byte aligned as WMMA requires. cuda/attention.rs
// mirrors the sizes.
struct AttnSmem {
    unsigned char* p;
    template <typename T>
    __device__ __forceinline__ T* take(int bytes) {
        T* r = reinterpret_cast<T*>(p);
        p += bytes;
        return r;
    }
};
__device__ __forceinline__ int attn_tile_bytes(const AttnDims& g) { return ATT_KT * g.ld * 2; }
__device__ __forceinline__ int attn_acc_bytes(const AttnDims& g) { return 16 * g.lo * 4; }

// Copies rows [t0, t0 + ATT_KT) of one head (dims [0, D) at element base + t*HD) of a
// [batch, seq, heads*D] bf16 tensor into a tile, zero-filling rows past T and dims past D: the
// fragments read all 16*nc dims, and zero rows/dims add nothing to any product. Whole 16-byte
// chunks when every row starts 16-byte aligned (D a multiple of 8), single elements otherwise.
__device__ __forceinline__ void attn_load_tile(bf16* tile, const AttnDims& g, const bf16* src, u64 base, u64 HD,
                                               int t0, int T) {
    const int dp = g.nc * 16;
    if ((g.D & 7) == 0 && (reinterpret_cast<u64>(src) & 15) == 0) {
        const int cpr = dp >> 3;
        for (int idx = threadIdx.x; idx < ATT_KT * cpr; idx += blockDim.x) {
            const int r = idx / cpr, c = (idx - r * cpr) << 3, t = t0 + r;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (t < T && c < g.D) v = *reinterpret_cast<const uint4*>(src + base + (u64)t * HD + c);
            *reinterpret_cast<uint4*>(tile + r * g.ld + c) = v;
        }
    } else {
        for (int idx = threadIdx.x; idx < ATT_KT * dp; idx += blockDim.x) {
            const int r = idx / dp, c = idx - r * dp, t = t0 + r;
            tile[r * g.ld + c] = t < T && c < g.D ? src[base + (u64)t * HD + c] : __float2bfloat16_rn(0.0f);
        }
    }
}

// S = A.B^T into a warp's f32 score tile (stride ATT_LDS): A is the warp's 16 rows of one tile, B
// the first 16*nch rows of another (both bf16, stride g.ld). Head chunks outermost, so each A
// fragment is loaded once for the ATT_NT column blocks.
__device__ __forceinline__ void attn_mma_abt(float* S, const bf16* A, const bf16* B, const AttnDims& g, int nch) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[ATT_NT];
#pragma unroll
    for (int n = 0; n < ATT_NT; ++n) wmma::fill_fragment(acc[n], 0.0f);
    for (int c = 0; c < g.nc; ++c) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
        wmma::load_matrix_sync(a, A + c * 16, g.ld);
#pragma unroll
        for (int n = 0; n < ATT_NT; ++n) {
            if (n < nch) {
                // Row-major rows of B read column-major are B^T.
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> bt;
                wmma::load_matrix_sync(bt, B + n * 16 * g.ld + c * 16, g.ld);
                wmma::mma_sync(acc[n], a, bt, acc[n]);
            }
        }
    }
#pragma unroll
    for (int n = 0; n < ATT_NT; ++n)
        if (n < nch) wmma::store_matrix_sync(S + n * 16, acc[n], ATT_LDS, wmma::mem_row_major);
}

// C += P.B: C a warp's f32 accumulator tile (16 x 16*nc, stride g.lo), P its bf16 probability tile
// (16 x 16*nch, stride ATT_LDP), B the first 16*nch rows of a bf16 tile (stride g.ld). C lives in
// shared memory, not in fragments, because the forward rescales its rows between products; the
// load and store are amortised over ATT_NT products per chunk.
__device__ __forceinline__ void attn_mma_acc(float* C, const bf16* P, const bf16* B, const AttnDims& g, int nch) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> p[ATT_NT];
#pragma unroll
    for (int n = 0; n < ATT_NT; ++n)
        if (n < nch) wmma::load_matrix_sync(p[n], P + n * 16, ATT_LDP);
    for (int c = 0; c < g.nc; ++c) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::load_matrix_sync(acc, C + c * 16, g.lo, wmma::mem_row_major);
#pragma unroll
        for (int n = 0; n < ATT_NT; ++n) {
            if (n < nch) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
                wmma::load_matrix_sync(b, B + n * 16 * g.ld + c * 16, g.ld);
                wmma::mma_sync(acc, p[n], b, acc);
            }
        }
        wmma::store_matrix_sync(C + c * 16, acc, g.lo, wmma::mem_row_major);
    }
}

// Whether any key of a tile is real (kvalid: ATT_KT flags); every warp gets the same answer. With
// right padding whole tiles can be padding, and then a tile adds nothing (P = 0 throughout).
__device__ __forceinline__ bool attn_any_key(const int* kvalid) {
    int any = 0;
    for (int j = threadIdx.x & 31; j < ATT_KT; j += 32) any |= kvalid[j];
    return warp_sum(any) != 0;
}

__device__ __forceinline__ void attn_zero_acc(float* C, const AttnDims& g) {
    for (int i = threadIdx.x & 31; i < 16 * g.lo; i += 32) C[i] = 0.0f;
}

// Writes the rows t0 + r < T of a warp's f32 accumulator tile, times the row's factor (held by
// lanes 2r and 2r+1), as bf16 dims [0, D) of one head: a row at a time, lanes along the dims, so
// each row is one coalesced run.
__device__ __forceinline__ void attn_store_rows(bf16* dst, u64 base, u64 HD, int t0, int T, const float* C,
                                                const AttnDims& g, float factor) {
    const int lane = threadIdx.x & 31;
    for (int r = 0; r < 16; ++r) {
        const float f = __shfl_sync(FULL_MASK, factor, 2 * r);
        if (t0 + r >= T) break;
        for (int d = lane; d < g.D; d += 32) stf(dst, base + (u64)(t0 + r) * HD + d, C[r * g.lo + d] * f);
    }
}

// Attention-probability dropout, the CPU's `fill_keep` (src/backend/cpu/attention.rs): probability
// (b, h, i, j) is Philox number ((b·H + h)·T + i)·T + j of stream (seed, stream), kept (and scaled
// by 1/(1-p), computed on the host in f32) when its 24-bit uniform is >= p. p = 0: always 1.
struct AttnDrop {
    float p, scale;
    u64 seed, stream;
};

__device__ __forceinline__ float attn_keep(const AttnDrop& dr, int b, int h, int i, int j, int H, int T) {
    if (!(dr.p > 0.0f)) return 1.0f;
    const u64 idx = (((u64)b * H + h) * T + i) * T + j;
    return philox_uniform(dr.seed, dr.stream, idx) >= dr.p ? dr.scale : 0.0f;
}
