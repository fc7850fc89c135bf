// Elementwise kernels: dtype conversion, add, dropout (Philox masks identical to the CPU
// backend's), exact-erf GELU, ReLU and tanh forward and backward. CPU twin: src/backend/cpu/elementwise.rs.
// All take 64-bit element counts and use grid-stride loops, so any launch size is correct.
#include "common.cuh"

template <typename TD, typename TS>
__device__ __forceinline__ void convert_body(const TS* src, TD* dst, u64 n) {
    GRID_STRIDE(i, n) stf(dst, i, ldf(src, i));
}
extern "C" __global__ void convert_bf16_to_f32(const bf16* src, float* dst, u64 n) { convert_body(src, dst, n); }
extern "C" __global__ void convert_f32_to_bf16(const float* src, bf16* dst, u64 n) { convert_body(src, dst, n); }

// dst += src, the sum rounded once to dst's type.
template <typename TD, typename TS>
__device__ __forceinline__ void add_body(TD* dst, const TS* src, u64 n) {
    GRID_STRIDE(i, n) stf(dst, i, ldf(dst, i) + ldf(src, i));
}
extern "C" __global__ void add_bf16_bf16(bf16* dst, const bf16* src, u64 n) { add_body(dst, src, n); }
extern "C" __global__ void add_bf16_f32(bf16* dst, const float* src, u64 n) { add_body(dst, src, n); }
extern "C" __global__ void add_f32_bf16(float* dst, const bf16* src, u64 n) { add_body(dst, src, n); }
extern "C" __global__ void add_f32_f32(float* dst, const float* src, u64 n) { add_body(dst, src, n); }


// Inverted dropout in place: element i kept when uniform(seed, stream, i) >= p, then scaled by
// `scale` = 1/(1-p) (computed on the host in f32, exactly as the CPU backend does).
template <typename T>
__device__ __forceinline__ void dropout_body(T* x, u64 n, float p, float scale, u64 seed, u64 stream) {
    GRID_STRIDE(i, n) {
        const bool keep = philox_uniform(seed, stream, i) >= p;
        stf(x, i, keep ? ldf(x, i) * scale : 0.0f);
    }
}
extern "C" __global__ void dropout_bf16(bf16* x, u64 n, float p, float scale, u64 seed, u64 stream) {
    dropout_body(x, n, p, scale, seed, stream);
}
extern "C" __global__ void dropout_f32(float* x, u64 n, float p, float scale, u64 seed, u64 stream) {
    dropout_body(x, n, p, scale, seed, stream);
}

// Exact GELU, x * Phi(x), as torch.nn.functional.gelu(approximate="none").
__device__ __forceinline__ float gelu_f(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_grad_f(float x) {
    const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    const float pdf = expf(-0.5f * x * x) * 0.39894228040143268f;
    return cdf + x * pdf;
}

extern "C" __global__ void gelu_fwd_bf16(const bf16* x, bf16* y, u64 n) {
    GRID_STRIDE(i, n) stf(y, i, gelu_f(ldf(x, i)));
}

extern "C" __global__ void gelu_bwd_bf16(const bf16* x, const bf16* dy, bf16* dx, u64 n) {
    GRID_STRIDE(i, n) stf(dx, i, ldf(dy, i) * gelu_grad_f(ldf(x, i)));
}

// ReLU and tanh (the length predictor, docs/method.md §5.1). The backward of ReLU reads the
// forward's input, that of tanh its output: dx = dy * (1 - y^2).
extern "C" __global__ void relu_fwd_bf16(const bf16* x, bf16* y, u64 n) {
    GRID_STRIDE(i, n) stf(y, i, fmaxf(ldf(x, i), 0.0f));
}
extern "C" __global__ void relu_bwd_bf16(const bf16* x, const bf16* dy, bf16* dx, u64 n) {
    GRID_STRIDE(i, n) stf(dx, i, ldf(x, i) > 0.0f ? ldf(dy, i) : 0.0f);
}
extern "C" __global__ void tanh_fwd_bf16(const bf16* x, bf16* y, u64 n) {
    GRID_STRIDE(i, n) stf(y, i, tanhf(ldf(x, i)));
}
extern "C" __global__ void tanh_bwd_bf16(const bf16* y, const bf16* dy, bf16* dx, u64 n) {
    GRID_STRIDE(i, n) {
        const float v = ldf(y, i);
        stf(dx, i, ldf(dy, i) * (1.0f - v * v));
    }
}

// Raw Philox numbers first..first+n of (seed, stream): lets the parity tests compare the device
// generator with src/rng.rs bit for bit.
extern "C" __global__ void philox_fill_u32(u32* out, u64 n, u64 seed, u64 stream, u64 first) {
    GRID_STRIDE(i, n) out[i] = philox_u32(seed, stream, first + i);
}
