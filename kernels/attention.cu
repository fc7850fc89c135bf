// Flash-style bidirectional attention forward with a key-padding mask and attention-probability
// dropout. CPU twin: src/backend/cpu/attention.rs (same math; the T x T score matrix never exists here).
//
// Q, K, V, out: [batch, seq, heads * head_dim] bf16. lse: [batch, heads, seq] f32.
// Block = ATT_WARPS warps for one (batch, head) and ATT_KT consecutive queries, 16 per warp. Keys
// stream through shared memory in tiles of ATT_KT. Per tile each warp computes its 16 x ATT_KT
// scores on tensor cores, runs the online softmax (running max m, running sum l, in f32) on them
// two lanes per row, rescales its f32 output tile by exp(m_old - m_new) and adds P.V on tensor
// cores, with P rounded to bf16 (as FlashAttention does; l sums the unrounded f32 values).
//
// Dropout acts on the normalised probabilities, as on the CPU: l (and so lse) sums the kept and
// the dropped alike, while P.V takes each probability times its keep factor (0 or 1/(1-p)).
#include "attention.cuh"

// Dynamic shared memory, in order: Q, K and V tiles (attn_tile_bytes each), ATT_WARPS score areas
// (ATT_SCORE_BYTES), ATT_WARPS output tiles (attn_acc_bytes), ATT_KT key flags (int).
extern "C" __global__ void attn_fwd(const bf16* q, const bf16* k, const bf16* v, const int* key_mask, bf16* out,
                                    float* lse, int T, int H, int D, float scale, float drop_p, float drop_scale,
                                    u64 seed, u64 stream) {
    extern __shared__ __align__(128) unsigned char attn_smem[];
    const AttnDrop drop{drop_p, drop_scale, seed, stream};
    const AttnDims g = attn_dims(D);
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * ATT_KT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    AttnSmem sm{attn_smem};
    bf16* Qs = sm.take<bf16>(attn_tile_bytes(g));
    bf16* Ks = sm.take<bf16>(attn_tile_bytes(g));
    bf16* Vs = sm.take<bf16>(attn_tile_bytes(g));
    float* Sw = sm.take<float>(ATT_WARPS * ATT_SCORE_BYTES) + warp * (ATT_SCORE_BYTES / 4);
    bf16* Pw = reinterpret_cast<bf16*>(Sw);  // P overwrites the scores it is made from
    float* Ow = sm.take<float>(ATT_WARPS * attn_acc_bytes(g)) + warp * 16 * g.lo;
    int* kvalid = sm.take<int>(ATT_KT * 4);
    const u64 HD = (u64)H * D;
    const u64 base = (u64)b * T * HD + (u64)h * D;  // element (b, t, h, d) = base + t*HD + d

    attn_load_tile(Qs, g, q, base, HD, q0, T);
    attn_zero_acc(Ow, g);
    const bf16* Qw = Qs + warp * 16 * g.ld;
    // Two lanes per row of the warp's 16: lane 2r + half takes row r, columns half, half + 2, ...
    const int r = lane >> 1, half = lane & 1;
    const int qi = q0 + warp * 16 + r;
    // A warp whose rows all lie past T has nothing to compute (it still loads tiles and syncs).
    const bool live = q0 + warp * 16 < T;
    float m = -INFINITY, l = 0.0f;

    for (int k0 = 0; k0 < T; k0 += ATT_KT) {
        __syncthreads();  // Q tile written; previous K/V tiles and output tiles done with
        attn_load_tile(Ks, g, k, base, HD, k0, T);
        attn_load_tile(Vs, g, v, base, HD, k0, T);
        for (int j = threadIdx.x; j < ATT_KT; j += blockDim.x)
            kvalid[j] = k0 + j < T && key_mask[(u64)b * T + k0 + j] != 0;
        __syncthreads();
        if (!live || !attn_any_key(kvalid)) continue;
        const int nch = (min(ATT_KT, T - k0) + 15) >> 4;

        attn_mma_abt(Sw, Qw, Ks, g, nch);
        __syncwarp();
        float s[ATT_KT / 2];
        float mx = -INFINITY;
#pragma unroll
        for (int jj = 0; jj < ATT_KT / 2; ++jj) {
            const int j = 2 * jj + half;
            s[jj] = kvalid[j] ? Sw[r * ATT_LDS + j] * scale : -INFINITY;
            mx = fmaxf(mx, s[jj]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
        const float m_new = fmaxf(m, mx);
        // m_new = -inf: no real key seen yet for this row, nothing to rescale.
        const float alpha = m_new == -INFINITY ? 1.0f : expf(m - m_new);
        __syncwarp();  // both lanes of every row have read their scores before P overwrites them
        float sum = 0.0f;
#pragma unroll
        for (int jj = 0; jj < ATT_KT / 2; ++jj) {
            const int j = 2 * jj + half;
            float p = 0.0f, pk = 0.0f;
            if (kvalid[j]) {
                p = expf(s[jj] - m_new);
                // Rows past T are never stored: no need to draw their keep factors.
                pk = qi < T ? p * attn_keep(drop, b, h, qi, k0 + j, H, T) : p;
            }
            sum += p;
            Pw[r * ATT_LDP + j] = __float2bfloat16_rn(pk);
        }
        l = l * alpha + sum + __shfl_xor_sync(FULL_MASK, sum, 1);
        m = m_new;
        if (alpha != 1.0f)
            for (int d = half; d < 16 * g.nc; d += 2) Ow[r * g.lo + d] *= alpha;
        __syncwarp();
        attn_mma_acc(Ow, Pw, Vs, g, nch);
    }

    __syncwarp();
    // A row whose keys are all padding gets out = 0 and lse = -inf, as on the CPU.
    if (half == 0 && qi < T) lse[((u64)b * H + h) * T + qi] = l > 0.0f ? m + logf(l) : -INFINITY;
    attn_store_rows(out, base, HD, q0 + warp * 16, T, Ow, g, l > 0.0f ? 1.0f / l : 0.0f);
}
