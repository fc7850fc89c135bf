// Optimizer kernels: AdamW on f32 master weights (with the bf16 copy the forward pass reads
// refreshed in the same pass) and the sum of squares for the global gradient norm.
// CPU twin: src/backend/cpu/adamw.rs.
#include "common.cuh"

// PyTorch single-tensor AdamW, in the CPU twin's operation order with every operation rounded
// separately (the _rn intrinsics forbid fused multiply-adds), so f32 results match the CPU bit for
// bit. Each gradient is multiplied by gscale as it is read: gradient clipping without a pass of
// its own over the gradients. Host-computed constants: decay = 1 - lr*wd, one_m_b1 = 1 - beta1, one_m_b2 = 1 - beta2,
// step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t).
template <typename TG>
__device__ __forceinline__ void adamw_body(float* p, bf16* shadow, const TG* g, float* m, float* v, u64 n, float gscale, float b2,
                                           float one_m_b1, float one_m_b2, float eps, float decay, float step_size,
                                           float bc2_sqrt) {
    GRID_STRIDE(i, n) {
        const float gi = __fmul_rn(ldf(g, i), gscale);
        float pi = __fmul_rn(p[i], decay);
        const float mi = __fadd_rn(m[i], __fmul_rn(__fsub_rn(gi, m[i]), one_m_b1));
        const float vi = __fadd_rn(__fmul_rn(v[i], b2), __fmul_rn(__fmul_rn(one_m_b2, gi), gi));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        pi = __fsub_rn(pi, __fdiv_rn(__fmul_rn(step_size, mi), denom));
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        if (shadow != nullptr) stf(shadow, i, pi);
    }
}
extern "C" __global__ void adamw_bf16g(float* p, bf16* shadow, const bf16* g, float* m, float* v, u64 n, float gscale, float b2,
                                       float one_m_b1, float one_m_b2, float eps, float decay, float step_size,
                                       float bc2_sqrt) {
    adamw_body(p, shadow, g, m, v, n, gscale, b2, one_m_b1, one_m_b2, eps, decay, step_size, bc2_sqrt);
}
extern "C" __global__ void adamw_f32g(float* p, bf16* shadow, const float* g, float* m, float* v, u64 n, float gscale, float b2,
                                      float one_m_b1, float one_m_b2, float eps, float decay, float step_size,
                                      float bc2_sqrt) {
    adamw_body(p, shadow, g, m, v, n, gscale, b2, one_m_b1, one_m_b2, eps, decay, step_size, bc2_sqrt);
}

// *out += sum of x^2 in f64 (one atomic per block; launch a bounded grid).
template <typename T>
__device__ __forceinline__ void sum_squares_body(const T* x, u64 n, double* out) {
    double s = 0.0;
    GRID_STRIDE(i, n) {
        const double v = (double)ldf(x, i);
        s += v * v;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) atomicAdd(out, s);
}
extern "C" __global__ void sum_squares_bf16(const bf16* x, u64 n, double* out) { sum_squares_body(x, n, out); }
extern "C" __global__ void sum_squares_f32(const float* x, u64 n, double* out) { sum_squares_body(x, n, out); }
