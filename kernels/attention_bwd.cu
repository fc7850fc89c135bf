// Flash-style attention backward with a key-padding mask and attention-probability dropout.
// CPU twin: attention_bwd in src/backend/cpu/attention.rs.
//
// Probabilities are recomputed from the forward's saved log-sum-exp, P_ij = exp(s_ij - lse_i), one
// tile at a time (no T x T matrix in memory). With K_ij the dropout keep factor (0 or 1/(1-p)):
//     dV_j += P_ij K_ij dO_i
//     dS_ij = P_ij (K_ij dO_i.V_j - D_i) * scale,   D_i = dO_i . O_i
//     dQ_i += dS_ij K_j,   dK_j += dS_ij Q_i
//
// dQ and dK/dV are written by two passes instead of one pass with atomics: `attn_bwd_dq` owns query
// rows and streams over the keys (it also writes D_i), then `attn_bwd_dkdv` owns key rows and
// streams over the queries. Each output element is then summed by one warp in a fixed order: the
// gradients are the same on every run (no float atomics), no f32 scratch copy of dQ needs zeroing
// and converting, and nothing contends. The price is computing the scores and dO.V twice, which
// at XLM-R's sequence lengths is small next to the GEMMs.
//
// Q, K, V, O, dO, dQ, dK, dV: [batch, seq, heads * head_dim] bf16; lse and D: [batch, heads, seq]
// f32. The products run on tensor cores (attention.cuh) with f32 accumulators; P and dS are
// rounded to bf16 as their operands, everything row-wise is f32.
#include "attention.cuh"

// Pass 1: dQ for ATT_KT query rows of one (batch, head) (16 per warp), and D_i for those rows.
// Dynamic shared memory, in order: Q, dO, K and V tiles (attn_tile_bytes each), ATT_WARPS score
// areas (ATT_SCORE_BYTES), ATT_WARPS dQ tiles (attn_acc_bytes), ATT_KT key flags (int).
extern "C" __global__ void attn_bwd_dq(const bf16* q, const bf16* k, const bf16* v, const int* key_mask,
                                       const bf16* out, const bf16* dout, const float* lse, float* drow, bf16* dq,
                                       int T, int H, int D, float scale, float drop_p, float drop_scale, u64 seed,
                                       u64 stream) {
    extern __shared__ __align__(128) unsigned char attn_smem[];
    const AttnDrop drop{drop_p, drop_scale, seed, stream};
    const AttnDims g = attn_dims(D);
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * ATT_KT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    AttnSmem sm{attn_smem};
    bf16* Qs = sm.take<bf16>(attn_tile_bytes(g));
    bf16* Gs = sm.take<bf16>(attn_tile_bytes(g));
    bf16* Ks = sm.take<bf16>(attn_tile_bytes(g));
    bf16* Vs = sm.take<bf16>(attn_tile_bytes(g));
    float* Sw = sm.take<float>(ATT_WARPS * ATT_SCORE_BYTES) + warp * (ATT_SCORE_BYTES / 4);
    bf16* Pw = reinterpret_cast<bf16*>(Sw);  // dS overwrites the scores it is made from
    float* Aw = sm.take<float>(ATT_WARPS * attn_acc_bytes(g)) + warp * 16 * g.lo;
    int* kvalid = sm.take<int>(ATT_KT * 4);
    const u64 HD = (u64)H * D;
    const u64 base = (u64)b * T * HD + (u64)h * D;  // element (b, t, h, d) = base + t*HD + d
    const u64 row0 = ((u64)b * H + h) * T;          // (b, h, t) of lse and D = row0 + t

    attn_load_tile(Qs, g, q, base, HD, q0, T);
    attn_load_tile(Gs, g, dout, base, HD, q0, T);
    attn_zero_acc(Aw, g);
    __syncthreads();

    const bf16* Qw = Qs + warp * 16 * g.ld;
    const bf16* Gw = Gs + warp * 16 * g.ld;
    const int r = lane >> 1, half = lane & 1;  // two lanes per row, as in the forward
    const int qi = q0 + warp * 16 + r;
    const bool live = q0 + warp * 16 < T;
    float di = 0.0f;
    for (int rr = 0; rr < 16; ++rr) {
        const int t = q0 + warp * 16 + rr;
        float part = 0.0f;
        if (t < T)
            for (int d = lane; d < D; d += 32)
                part += __bfloat162float(Gw[rr * g.ld + d]) * ldf(out, base + (u64)t * HD + d);
        part = warp_sum(part);
        if (rr == r) di = part;
        if (lane == 0 && t < T) drow[row0 + t] = part;
    }
    const float li = qi < T ? lse[row0 + qi] : 0.0f;

    for (int k0 = 0; k0 < T; k0 += ATT_KT) {
        __syncthreads();  // the previous K/V tiles fully read
        attn_load_tile(Ks, g, k, base, HD, k0, T);
        attn_load_tile(Vs, g, v, base, HD, k0, T);
        for (int j = threadIdx.x; j < ATT_KT; j += blockDim.x)
            kvalid[j] = k0 + j < T && key_mask[(u64)b * T + k0 + j] != 0;
        __syncthreads();
        if (!live || !attn_any_key(kvalid)) continue;
        const int nch = (min(ATT_KT, T - k0) + 15) >> 4;

        // dP and S take turns in the one score tile; dP goes to registers first.
        attn_mma_abt(Sw, Gw, Vs, g, nch);
        __syncwarp();
        float ds[ATT_KT / 2];
#pragma unroll
        for (int jj = 0; jj < ATT_KT / 2; ++jj) ds[jj] = Sw[r * ATT_LDS + 2 * jj + half];
        __syncwarp();
        attn_mma_abt(Sw, Qw, Ks, g, nch);
        __syncwarp();
#pragma unroll
        for (int jj = 0; jj < ATT_KT / 2; ++jj) {
            const int j = 2 * jj + half;
            const float dp = ds[jj];
            ds[jj] = 0.0f;
            // A real key implies lse_i is finite (the mask is per key, shared by all queries).
            if (kvalid[j] && qi < T) {
                const float p = expf(Sw[r * ATT_LDS + j] * scale - li);
                const float keep = attn_keep(drop, b, h, qi, k0 + j, H, T);
                ds[jj] = p * (dp * keep - di) * scale;
            }
        }
        __syncwarp();  // every score read before dS overwrites them
#pragma unroll
        for (int jj = 0; jj < ATT_KT / 2; ++jj) Pw[r * ATT_LDP + 2 * jj + half] = __float2bfloat16_rn(ds[jj]);
        __syncwarp();
        attn_mma_acc(Aw, Pw, Ks, g, nch);
    }

    __syncwarp();
    attn_store_rows(dq, base, HD, q0 + warp * 16, T, Aw, g, 1.0f);
}

// Pass 2: dK and dV for ATT_KT key rows of one (batch, head) (16 per warp), streaming over the
// queries with their lse and D (written by pass 1). Per query tile a warp computes S^T = K.Q^T and
// dP^T = V.dO^T for its keys, turns them into P^T K and dS^T (bf16, side by side in its score
// area) and adds P^T.dO to dV and dS^T.Q to dK.
// Dynamic shared memory, in order: K, V, Q and dO tiles (attn_tile_bytes each), ATT_WARPS score
// areas (ATT_SCORE_BYTES), ATT_WARPS dK tiles and ATT_WARPS dV tiles (attn_acc_bytes each), then
// ATT_KT lse and ATT_KT D values (f32).
extern "C" __global__ void attn_bwd_dkdv(const bf16* q, const bf16* k, const bf16* v, const int* key_mask,
                                         const bf16* dout, const float* lse, const float* drow, bf16* dk, bf16* dv,
                                         int T, int H, int D, float scale, float drop_p, float drop_scale, u64 seed,
                                         u64 stream) {
    extern __shared__ __align__(128) unsigned char attn_smem[];
    const AttnDrop drop{drop_p, drop_scale, seed, stream};
    const AttnDims g = attn_dims(D);
    const int b = blockIdx.z, h = blockIdx.y, j0 = blockIdx.x * ATT_KT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    AttnSmem sm{attn_smem};
    bf16* Kb = sm.take<bf16>(attn_tile_bytes(g));
    bf16* Vb = sm.take<bf16>(attn_tile_bytes(g));
    bf16* Qs = sm.take<bf16>(attn_tile_bytes(g));
    bf16* Gs = sm.take<bf16>(attn_tile_bytes(g));
    float* Sw = sm.take<float>(ATT_WARPS * ATT_SCORE_BYTES) + warp * (ATT_SCORE_BYTES / 4);
    bf16* Pw = reinterpret_cast<bf16*>(Sw);  // P^T K, then dS^T: both overwrite the f32 scores
    bf16* Dw = Pw + 16 * ATT_LDP;
    float* dKw = sm.take<float>(ATT_WARPS * attn_acc_bytes(g)) + warp * 16 * g.lo;
    float* dVw = sm.take<float>(ATT_WARPS * attn_acc_bytes(g)) + warp * 16 * g.lo;
    float* Ls = sm.take<float>(ATT_KT * 4);
    float* Ds = sm.take<float>(ATT_KT * 4);
    const u64 HD = (u64)H * D;
    const u64 base = (u64)b * T * HD + (u64)h * D;
    const u64 row0 = ((u64)b * H + h) * T;

    attn_load_tile(Kb, g, k, base, HD, j0, T);
    attn_load_tile(Vb, g, v, base, HD, j0, T);
    attn_zero_acc(dKw, g);
    attn_zero_acc(dVw, g);
    const bf16* Kw = Kb + warp * 16 * g.ld;
    const bf16* Vw = Vb + warp * 16 * g.ld;
    const int r = lane >> 1, half = lane & 1;  // two lanes per key row
    const int kj = j0 + warp * 16 + r;
    // Padding keys (and rows past T) get no gradient: their P is 0 for every query. A warp whose
    // 16 keys are all padding skips the products and stores zeros.
    const bool key_ok = kj < T && key_mask[(u64)b * T + kj] != 0;
    const bool live = warp_sum((int)key_ok) > 0;

    for (int i0 = 0; i0 < T; i0 += ATT_KT) {
        __syncthreads();  // K/V tiles written (first tile); the previous Q/dO tiles fully read
        attn_load_tile(Qs, g, q, base, HD, i0, T);
        attn_load_tile(Gs, g, dout, base, HD, i0, T);
        for (int i = threadIdx.x; i < ATT_KT; i += blockDim.x) {
            const int t = i0 + i;
            Ls[i] = t < T ? lse[row0 + t] : 0.0f;
            Ds[i] = t < T ? drow[row0 + t] : 0.0f;
        }
        __syncthreads();
        if (!live) continue;
        const int nq = min(ATT_KT, T - i0), nch = (nq + 15) >> 4;

        attn_mma_abt(Sw, Vw, Gs, g, nch);  // dP^T
        __syncwarp();
        float ds[ATT_KT / 2], pk[ATT_KT / 2];
#pragma unroll
        for (int ii = 0; ii < ATT_KT / 2; ++ii) ds[ii] = Sw[r * ATT_LDS + 2 * ii + half];
        __syncwarp();
        attn_mma_abt(Sw, Kw, Qs, g, nch);  // S^T
        __syncwarp();
#pragma unroll
        for (int ii = 0; ii < ATT_KT / 2; ++ii) {
            const int i = 2 * ii + half;
            const float dp = ds[ii];
            pk[ii] = ds[ii] = 0.0f;
            if (key_ok && i < nq) {
                const float p = expf(Sw[r * ATT_LDS + i] * scale - Ls[i]);
                const float keep = attn_keep(drop, b, h, i0 + i, kj, H, T);
                pk[ii] = p * keep;
                ds[ii] = p * (dp * keep - Ds[i]) * scale;
            }
        }
        __syncwarp();  // every score read before P^T K and dS^T overwrite them
#pragma unroll
        for (int ii = 0; ii < ATT_KT / 2; ++ii) {
            const int i = 2 * ii + half;
            Pw[r * ATT_LDP + i] = __float2bfloat16_rn(pk[ii]);
            Dw[r * ATT_LDP + i] = __float2bfloat16_rn(ds[ii]);
        }
        __syncwarp();
        attn_mma_acc(dVw, Pw, Gs, g, nch);
        attn_mma_acc(dKw, Dw, Qs, g, nch);
    }

    __syncwarp();
    attn_store_rows(dk, base, HD, j0 + warp * 16, T, dKw, g, 1.0f);
    attn_store_rows(dv, base, HD, j0 + warp * 16, T, dVw, g, 1.0f);
}
