// Shared device helpers: bf16 <-> f32 loads and stores, warp and block reductions, and the
// Philox4x32-10 generator bit-identical to src/rng.rs.
//
// Only <cuda_bf16.h> is included: NVRTC (the run-time fallback) has no C library headers, so
// INFINITY and the fixed-width integer types are spelled out here.
#pragma once
#include <cuda_bf16.h>

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

typedef __nv_bfloat16 bf16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define FULL_MASK 0xffffffffu

// ---- loads and stores: arithmetic is always f32, storage bf16 or f32 -------------------------
__device__ __forceinline__ float ldf(const bf16* p, u64 i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float ldf(const float* p, u64 i) { return p[i]; }
// Round-to-nearest-even, the same rounding as half::bf16::from_f32 on the host.
__device__ __forceinline__ void stf(bf16* p, u64 i, float v) { p[i] = __float2bfloat16_rn(v); }
__device__ __forceinline__ void stf(float* p, u64 i, float v) { p[i] = v; }
__device__ __forceinline__ float round_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// Grid-stride loop over [0, n) with 64-bit indices.
#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)(n); i += (u64)gridDim.x * blockDim.x)

// ---- reductions (all 32 lanes must take part) --------------------------------------------------
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. Safe to call several times in a row: the leading barrier keeps the next call's writes
// behind the previous call's reads of the shared slot.
template <typename T>
__device__ T block_sum(T v) {
    __shared__ T partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T w = lane < nwarps ? partial[lane] : T(0);
        w = warp_sum(w);
        if (lane == 0) partial[0] = w;
    }
    __syncthreads();
    return partial[0];
}

// ---- log-sum-exp accumulators ------------------------------------------------------------------
// (m, s) stands for s * exp(m): the running max and the sum of exp(x - m). m = -inf means empty.
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    if (m2 == -INFINITY) return;
    if (m == -INFINITY) {
        m = m2;
        s = s2;
    } else if (m2 > m) {
        s = s * expf(m - m2) + s2;
        m = m2;
    } else {
        s += s2 * expf(m2 - m);
    }
}

__device__ __forceinline__ void warp_lse_merge(float& m, float& s) {
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(FULL_MASK, m, o);
        float s2 = __shfl_xor_sync(FULL_MASK, s, o);
        lse_merge(m, s, m2, s2);
    }
}

// ---- Philox4x32-10 (Salmon et al. 2011), as in src/rng.rs ---------------------------------------
__device__ __forceinline__ uint4 philox4x32_10(uint4 c, u32 k0, u32 k1) {
    const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += W0;
            k1 += W1;
        }
        const u32 hi0 = __umulhi(M0, c.x), lo0 = M0 * c.x;
        const u32 hi1 = __umulhi(M1, c.z), lo1 = M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
    }
    return c;
}

// The four numbers of Philox block `block` of stream (seed, stream): numbers 4*block .. 4*block+3.
__device__ __forceinline__ uint4 philox_block(u64 seed, u64 stream, u64 block) {
    return philox4x32_10(make_uint4((u32)block, (u32)(block >> 32), (u32)stream, (u32)(stream >> 32)), (u32)seed,
                         (u32)(seed >> 32));
}

__device__ __forceinline__ u32 uint4_lane(uint4 r, u32 lane) {
    return lane == 0 ? r.x : lane == 1 ? r.y : lane == 2 ? r.z : r.w;
}

// Number `idx` of the stream: block idx >> 2, lane idx & 3.
__device__ __forceinline__ u32 philox_u32(u64 seed, u64 stream, u64 idx) {
    return uint4_lane(philox_block(seed, stream, idx >> 2), (u32)(idx & 3));
}

// Uniform in [0, 1) from the top 24 bits: exact in f32, so host and device agree bit for bit.
__device__ __forceinline__ float uniform_from_u32(u32 r) { return (float)(r >> 8) * (1.0f / 16777216.0f); }

__device__ __forceinline__ float philox_uniform(u64 seed, u64 stream, u64 idx) {
    return uniform_from_u32(philox_u32(seed, stream, idx));
}

// Gumbel(0,1) = -ln(-ln u), u kept inside (0, 1) as on the host. logf may differ from the host's
// ln by an ulp; everything before it is exact.
__device__ __forceinline__ float gumbel_from_u32(u32 r) {
    const float u = ((float)(r >> 8) + 0.5f) * (1.0f / 16777216.0f);
    return -logf(-logf(u));
}

__device__ __forceinline__ float philox_gumbel(u64 seed, u64 stream, u64 idx) {
    return gumbel_from_u32(philox_u32(seed, stream, idx));
}

// An int that orders floats as Rust's f32::total_cmp does (-NaN < -inf < ... < -0 < +0 < ... < NaN).
__device__ __forceinline__ int total_order_key(float v) {
    const int x = __float_as_int(v);
    return x ^ (int)(((u32)(x >> 31)) >> 1);
}

// Block-wide log-sum-exp merge; every thread gets the block's (m, s).
__device__ void block_lse_merge(float& m, float& s) {
    __shared__ float pm[32], ps[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    warp_lse_merge(m, s);
    __syncthreads();
    if (lane == 0) {
        pm[warp] = m;
        ps[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        float m2 = lane < nwarps ? pm[lane] : -INFINITY;
        float s2 = lane < nwarps ? ps[lane] : 0.0f;
        warp_lse_merge(m2, s2);
        if (lane == 0) {
            pm[0] = m2;
            ps[0] = s2;
        }
    }
    __syncthreads();
    m = pm[0];
    s = ps[0];
}
