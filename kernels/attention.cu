// Flash-style bidirectional attention forward with a key-padding mask and attention-probability
// dropout. CPU twin: src/backend/cpu/attention.rs (same math; the T x T score matrix never exists here).
//
// Q, K, V, out: [batch, seq, heads * head_dim] bf16. lse: [batch, heads, seq] f32.
// Block = ATT_WARPS warps for one (batch, head) and ATT_QROWS consecutive queries; each warp owns
// ATT_ROWS query rows. Keys stream through shared memory in tiles of 32, one key per lane for the
// scores, then each lane accumulates its head dims (lane, lane+32, ...) of P.V with an online
// softmax (running max m, running sum l). Arithmetic is f32 throughout (SIMT, no tensor cores:
// correctness first; short sequences make this cheap next to the GEMMs).
//
// Dropout acts on the normalised probabilities, as on the CPU: l (and so lse) sums the kept and
// the dropped alike, while P.V takes each probability times its keep factor (0 or 1/(1-p)).
#include "attention.cuh"

// DPL = head dims per lane, head_dim <= 32 * DPL. Dynamic shared memory (floats):
// K tile ATT_KT * ks, V tile ATT_KT * head_dim, Q tile ATT_QROWS * head_dim, ks = attn_odd_stride.
template <int DPL>
__device__ __forceinline__ void attn_fwd_body(const bf16* q, const bf16* k, const bf16* v, const int* key_mask,
                                              bf16* out, float* lse, int T, int H, int D, float scale,
                                              const AttnDrop drop) {
    extern __shared__ float smem[];
    const int ks = attn_odd_stride(D);
    float* Ks = smem;
    float* Vs = Ks + ATT_KT * ks;
    float* Qs = Vs + ATT_KT * D;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * ATT_QROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u64 HD = (u64)H * D;
    const u64 base = (u64)b * T * HD + (u64)h * D;  // element (b, t, h, d) = base + t*HD + d

    for (int idx = threadIdx.x; idx < ATT_QROWS * D; idx += blockDim.x) {
        const int r = idx / D, d = idx - r * D, t = q0 + r;
        Qs[idx] = t < T ? ldf(q, base + (u64)t * HD + d) : 0.0f;
    }

    float m[ATT_ROWS], l[ATT_ROWS], o[ATT_ROWS][DPL];
#pragma unroll
    for (int r = 0; r < ATT_ROWS; ++r) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; ++i) o[r][i] = 0.0f;
    }
    const float* qw = Qs + warp * ATT_ROWS * D;

    for (int k0 = 0; k0 < T; k0 += ATT_KT) {
        __syncthreads();  // Q tile written; previous K/V tile fully read
        for (int idx = threadIdx.x; idx < ATT_KT * D; idx += blockDim.x) {
            const int j = idx / D, d = idx - j * D, t = k0 + j;
            float kv = 0.0f, vv = 0.0f;
            if (t < T) {
                const u64 off = base + (u64)t * HD + d;
                kv = ldf(k, off);
                vv = ldf(v, off);
            }
            Ks[j * ks + d] = kv;
            Vs[j * D + d] = vv;
        }
        __syncthreads();

        const int j = k0 + lane;
        const bool valid = j < T && key_mask[(u64)b * T + j] != 0;
        float s[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; ++r) s[r] = 0.0f;
        const float* kr = Ks + lane * ks;
#pragma unroll 4
        for (int d = 0; d < D; ++d) {
            const float kd = kr[d];
#pragma unroll
            for (int r = 0; r < ATT_ROWS; ++r) s[r] += qw[r * D + d] * kd;
        }

        float p[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; ++r) {
            const float sc = valid ? s[r] * scale : -INFINITY;
            const float m_new = fmaxf(m[r], warp_max(sc));
            // m_new = -inf: no real key seen yet for this row, nothing to rescale.
            const float alpha = m_new == -INFINITY ? 1.0f : expf(m[r] - m_new);
            p[r] = valid ? expf(sc - m_new) : 0.0f;
            l[r] = l[r] * alpha + warp_sum(p[r]);
#pragma unroll
            for (int i = 0; i < DPL; ++i) o[r][i] *= alpha;
            m[r] = m_new;
            // Rows past T draw a keep factor too (never stored); keys past T or masked have p = 0.
            if (valid) p[r] *= attn_keep(drop, b, h, q0 + warp * ATT_ROWS + r, j, H, T);
        }

        const int jn = min(ATT_KT, T - k0);
        for (int jj = 0; jj < jn; ++jj) {
            float vd[DPL];
#pragma unroll
            for (int i = 0; i < DPL; ++i) {
                const int d = lane + 32 * i;
                vd[i] = d < D ? Vs[jj * D + d] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < ATT_ROWS; ++r) {
                const float pj = __shfl_sync(FULL_MASK, p[r], jj);
#pragma unroll
                for (int i = 0; i < DPL; ++i) o[r][i] += pj * vd[i];
            }
        }
    }

#pragma unroll
    for (int r = 0; r < ATT_ROWS; ++r) {
        const int t = q0 + warp * ATT_ROWS + r;
        if (t >= T) continue;
        // A row whose keys are all padding gets out = 0 and lse = -inf, as on the CPU.
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; ++i) {
            const int d = lane + 32 * i;
            if (d < D) stf(out, base + (u64)t * HD + d, o[r][i] * inv);
        }
        if (lane == 0) lse[((u64)b * H + h) * T + t] = l[r] > 0.0f ? m[r] + logf(l[r]) : -INFINITY;
    }
}

extern "C" __global__ void attn_fwd_d32(const bf16* q, const bf16* k, const bf16* v, const int* key_mask, bf16* out,
                                        float* lse, int T, int H, int D, float scale, float drop_p, float drop_scale,
                                        u64 seed, u64 stream) {
    attn_fwd_body<1>(q, k, v, key_mask, out, lse, T, H, D, scale, AttnDrop{drop_p, drop_scale, seed, stream});
}
extern "C" __global__ void attn_fwd_d64(const bf16* q, const bf16* k, const bf16* v, const int* key_mask, bf16* out,
                                        float* lse, int T, int H, int D, float scale, float drop_p, float drop_scale,
                                        u64 seed, u64 stream) {
    attn_fwd_body<2>(q, k, v, key_mask, out, lse, T, H, D, scale, AttnDrop{drop_p, drop_scale, seed, stream});
}
extern "C" __global__ void attn_fwd_d96(const bf16* q, const bf16* k, const bf16* v, const int* key_mask, bf16* out,
                                        float* lse, int T, int H, int D, float scale, float drop_p, float drop_scale,
                                        u64 seed, u64 stream) {
    attn_fwd_body<3>(q, k, v, key_mask, out, lse, T, H, D, scale, AttnDrop{drop_p, drop_scale, seed, stream});
}
extern "C" __global__ void attn_fwd_d128(const bf16* q, const bf16* k, const bf16* v, const int* key_mask, bf16* out,
                                         float* lse, int T, int H, int D, float scale, float drop_p, float drop_scale,
                                         u64 seed, u64 stream) {
    attn_fwd_body<4>(q, k, v, key_mask, out, lse, T, H, D, scale, AttnDrop{drop_p, drop_scale, seed, stream});
}
