// Fused residual add + LayerNorm forward. CPU twin: src/backend/cpu/layernorm.rs.
// Statistics are f32 (two passes over a row cached in shared memory: mean, then the mean of
// squared deviations), inputs and outputs bf16.
#include "common.cuh"

// One block per row, dynamic shared memory = cols floats.
// With `res`: s = round_bf16(x + res) is stored to `sum` and normalised, so the saved sum and
// the statistics describe the same numbers (the backward pass reads `sum` as its input).
extern "C" __global__ void add_layernorm_fwd_bf16(const bf16* x, const bf16* res, bf16* sum, const bf16* gamma,
                                                  const bf16* beta, bf16* out, float* mean, float* rstd, int rows,
                                                  int cols, float eps) {
    extern __shared__ float row[];
    const int r = blockIdx.x;
    if (r >= rows) return;  // uniform per block, before any barrier
    const u64 base = (u64)r * cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = ldf(x, base + c);
        if (res != nullptr) {
            v = round_bf16(v + ldf(res, base + c));
            stf(sum, base + c, v);
        }
        row[c] = v;
        s += v;
    }
    const float mu = block_sum(s) / (float)cols;
    float q = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = row[c] - mu;
        q += d * d;
    }
    const float var = block_sum(q) / (float)cols;
    const float rs = 1.0f / sqrtf(var + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        stf(out, base + c, (row[c] - mu) * rs * ldf(gamma, c) + ldf(beta, c));
    }
    if (threadIdx.x == 0) {
        mean[r] = mu;
        rstd[r] = rs;
    }
}
