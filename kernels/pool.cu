// Mean pooling over the real rows of each sequence (the length predictor, docs/method.md §5.1).
// CPU twin: src/backend/cpu/pool.rs. One thread per (sequence, column): it counts the sequence's
// real rows, then walks them in order, so the sum is taken in the CPU twin's order, in f32.
#include "common.cuh"

__device__ __forceinline__ float inv_count(const int* key_mask, u64 b, u64 seq) {
    u64 n = 0;
    for (u64 s = 0; s < seq; ++s) n += key_mask[b * seq + s] != 0;
    return n == 0 ? 0.0f : 1.0f / (float)n;
}

// out[b, c] = sum over real s of x[b, s, c] / count_b.
extern "C" __global__ void mean_pool_fwd_bf16(const bf16* x, const int* key_mask, bf16* out, u64 batch, u64 seq, u64 cols) {
    GRID_STRIDE(i, batch * cols) {
        const u64 b = i / cols, c = i % cols;
        float acc = 0.0f;
        for (u64 s = 0; s < seq; ++s)
            if (key_mask[b * seq + s] != 0) acc += ldf(x, (b * seq + s) * cols + c);
        stf(out, i, acc * inv_count(key_mask, b, seq));
    }
}

// dx[b, s, c] = dout[b, c] / count_b at real rows s, 0 at the others.
extern "C" __global__ void mean_pool_bwd_bf16(const bf16* dout, const int* key_mask, bf16* dx, u64 batch, u64 seq, u64 cols) {
    GRID_STRIDE(i, batch * cols) {
        const u64 b = i / cols, c = i % cols;
        const float g = ldf(dout, i) * inv_count(key_mask, b, seq);
        for (u64 s = 0; s < seq; ++s) stf(dx, (b * seq + s) * cols + c, key_mask[b * seq + s] != 0 ? g : 0.0f);
    }
}
