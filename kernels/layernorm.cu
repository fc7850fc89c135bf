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

// Backward of LayerNorm given its input x (the saved residual sum) and the saved statistics:
// dx = rstd * (dout*gamma - mean(dout*gamma) - xhat * mean(dout*gamma*xhat)), overwritten or
// added (accumulate != 0); dgamma += sum_rows dout*xhat, dbeta += sum_rows dout (f32).
// A block takes LNB_ROWS consecutive rows; each thread keeps the dgamma/dbeta partial sums of the
// columns it owns in shared memory (2*cols floats) and adds them with one atomic per column.
#define LNB_ROWS 32
extern "C" __global__ void layernorm_bwd_bf16(const bf16* x, const bf16* dout, const bf16* gamma, const float* mean,
                                              const float* rstd, bf16* dx, int accumulate, float* dgamma,
                                              float* dbeta, int rows, int cols) {
    extern __shared__ float part[];
    float* sdg = part;
    float* sdb = part + cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        sdg[c] = 0.0f;
        sdb[c] = 0.0f;
    }
    const int r0 = blockIdx.x * LNB_ROWS, r1 = min(rows, r0 + LNB_ROWS);
    for (int r = r0; r < r1; ++r) {  // bounds are uniform per block, so the reductions are safe
        const u64 base = (u64)r * cols;
        const float mu = mean[r], rs = rstd[r];
        float sg = 0.0f, sgx = 0.0f;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const float xhat = (ldf(x, base + c) - mu) * rs;
            const float d = ldf(dout, base + c);
            const float g = d * ldf(gamma, c);
            sg += g;
            sgx += g * xhat;
            sdg[c] += d * xhat;
            sdb[c] += d;
        }
        const float mg = block_sum(sg) / (float)cols;
        const float mgx = block_sum(sgx) / (float)cols;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const float xhat = (ldf(x, base + c) - mu) * rs;
            const float v = rs * (ldf(dout, base + c) * ldf(gamma, c) - mg - xhat * mgx);
            stf(dx, base + c, accumulate ? ldf(dx, base + c) + v : v);
        }
    }
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        atomicAdd(dgamma + c, sdg[c]);
        atomicAdd(dbeta + c, sdb[c]);
    }
}
