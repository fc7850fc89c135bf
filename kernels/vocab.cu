// Weighted softmax cross-entropy over the vocabulary, loss and dlogits in one kernel.
// CPU twin: cpu::vocab::cross_entropy_fwd_bwd. Targets are checked on the host (0 <= t < valid).
#include "common.cuh"

// One block per row. Pass 1: log-sum-exp over c < valid (and the sum of the logits when label
// smoothing needs their mean). Pass 2 overwrites the row with
// weight * (softmax - (1-ls) * onehot(target) - ls/valid), zero past `valid`.
// `ls_over_valid` = ls / valid is computed on the host in f32, exactly as the CPU backend does.
extern "C" __global__ void __launch_bounds__(1024) cross_entropy_bf16(bf16* logits, const int* targets, const float* weights, float* loss,
                                              int rows, int vocab, int valid, float ls, float ls_over_valid) {
    const int r = blockIdx.x;
    if (r >= rows) return;  // uniform per block
    const u64 base = (u64)r * vocab;
    float m = -INFINITY, s = 0.0f;
    double sx = 0.0;
    for (int c = threadIdx.x; c < valid; c += blockDim.x) {
        const float x = ldf(logits, base + c);
        lse_merge(m, s, x, 1.0f);
        sx += (double)x;
    }
    block_lse_merge(m, s);
    if (ls > 0.0f) sx = block_sum(sx);
    const float lse = m + logf(s);
    const int t = targets[r];
    const float xt = ldf(logits, base + t);
    __syncthreads();  // every thread has read logits[t] before pass 2 overwrites it

    const float w = weights[r];
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        float g = 0.0f;
        if (c < valid) {
            float d = expf(ldf(logits, base + c) - lse) - ls_over_valid;
            if (c == t) d -= 1.0f - ls;
            g = d * w;
        }
        stf(logits, base + c, g);
    }
    if (threadIdx.x == 0) {
        const float nll = lse - xt;
        float l = nll;
        if (ls > 0.0f) {
            const float mean_nll = (float)((double)lse - sx / (double)valid);
            l = (1.0f - ls) * nll + ls * mean_nll;
        }
        loss[r] = l;
    }
}
