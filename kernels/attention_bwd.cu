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
// streams over the queries. Each output element is then summed by one thread in a fixed order: the
// gradients are the same on every run (no float atomics), no f32 scratch copy of dQ needs zeroing
// and converting, and nothing contends. The price is computing the scores and dO.V twice, which
// at XLM-R's sequence lengths is small next to the GEMMs.
//
// Q, K, V, O, dO, dQ, dK, dV: [batch, seq, heads * head_dim] bf16; lse and D: [batch, heads, seq]
// f32. Arithmetic is f32 (SIMT), as in the forward.
#include "attention.cuh"

// Pass 1: dQ for ATT_QROWS query rows of one (batch, head), and D_i for those rows.
// Dynamic shared memory (floats): K and V tiles ATT_KT * ks each (a key row per lane; K is also
// read a row at a time across lanes), the block's Q and dO rows ATT_QROWS * D each.
template <int DPL>
__device__ __forceinline__ void attn_bwd_dq_body(const bf16* q, const bf16* k, const bf16* v, const int* key_mask,
                                                 const bf16* out, const bf16* dout, const float* lse, float* drow,
                                                 bf16* dq, int T, int H, int D, float scale, const AttnDrop drop) {
    extern __shared__ float smem[];
    const int ks = attn_odd_stride(D);
    float* Ks = smem;
    float* Vs = Ks + ATT_KT * ks;
    float* Qs = Vs + ATT_KT * ks;
    float* Gs = Qs + ATT_QROWS * D;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * ATT_QROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u64 HD = (u64)H * D;
    const u64 base = (u64)b * T * HD + (u64)h * D;  // element (b, t, h, d) = base + t*HD + d
    const u64 row0 = ((u64)b * H + h) * T;          // (b, h, t) of lse and D = row0 + t

    for (int idx = threadIdx.x; idx < ATT_QROWS * D; idx += blockDim.x) {
        const int r = idx / D, d = idx - r * D, t = q0 + r;
        const bool in = t < T;
        Qs[idx] = in ? ldf(q, base + (u64)t * HD + d) : 0.0f;
        Gs[idx] = in ? ldf(dout, base + (u64)t * HD + d) : 0.0f;
    }
    __syncthreads();

    const float* qw = Qs + warp * ATT_ROWS * D;
    const float* gw = Gs + warp * ATT_ROWS * D;
    float di[ATT_ROWS], li[ATT_ROWS];
#pragma unroll
    for (int r = 0; r < ATT_ROWS; ++r) {
        const int t = q0 + warp * ATT_ROWS + r;
        float part = 0.0f;
        if (t < T)
            for (int d = lane; d < D; d += 32) part += gw[r * D + d] * ldf(out, base + (u64)t * HD + d);
        di[r] = warp_sum(part);
        li[r] = t < T ? lse[row0 + t] : 0.0f;
        if (lane == 0 && t < T) drow[row0 + t] = di[r];
    }

    float acc[ATT_ROWS][DPL];
#pragma unroll
    for (int r = 0; r < ATT_ROWS; ++r)
#pragma unroll
        for (int i = 0; i < DPL; ++i) acc[r][i] = 0.0f;

    for (int k0 = 0; k0 < T; k0 += ATT_KT) {
        __syncthreads();  // the previous K/V tile fully read
        for (int idx = threadIdx.x; idx < ATT_KT * D; idx += blockDim.x) {
            const int j = idx / D, d = idx - j * D, t = k0 + j;
            float kv = 0.0f, vv = 0.0f;
            if (t < T) {
                const u64 off = base + (u64)t * HD + d;
                kv = ldf(k, off);
                vv = ldf(v, off);
            }
            Ks[j * ks + d] = kv;
            Vs[j * ks + d] = vv;
        }
        __syncthreads();

        const int j = k0 + lane;
        const bool valid = j < T && key_mask[(u64)b * T + j] != 0;
        float s[ATT_ROWS], dp[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; ++r) s[r] = dp[r] = 0.0f;
        const float* kr = Ks + lane * ks;
        const float* vr = Vs + lane * ks;
#pragma unroll 4
        for (int d = 0; d < D; ++d) {
            const float kd = kr[d], vd = vr[d];
#pragma unroll
            for (int r = 0; r < ATT_ROWS; ++r) {
                s[r] += qw[r * D + d] * kd;
                dp[r] += gw[r * D + d] * vd;
            }
        }
        float ds[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; ++r) {
            const int t = q0 + warp * ATT_ROWS + r;
            ds[r] = 0.0f;
            // A real key implies lse_t is finite (the mask is per key, shared by all queries).
            if (valid && t < T) {
                const float p = expf(s[r] * scale - li[r]);
                const float keep = attn_keep(drop, b, h, t, j, H, T);
                ds[r] = p * (dp[r] * keep - di[r]) * scale;
            }
        }

        const int jn = min(ATT_KT, T - k0);
        for (int jj = 0; jj < jn; ++jj) {
            float kd[DPL];
#pragma unroll
            for (int i = 0; i < DPL; ++i) {
                const int d = lane + 32 * i;
                kd[i] = d < D ? Ks[jj * ks + d] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < ATT_ROWS; ++r) {
                const float dsj = __shfl_sync(FULL_MASK, ds[r], jj);
#pragma unroll
                for (int i = 0; i < DPL; ++i) acc[r][i] += dsj * kd[i];
            }
        }
    }

#pragma unroll
    for (int r = 0; r < ATT_ROWS; ++r) {
        const int t = q0 + warp * ATT_ROWS + r;
        if (t >= T) continue;
#pragma unroll
        for (int i = 0; i < DPL; ++i) {
            const int d = lane + 32 * i;
            if (d < D) stf(dq, base + (u64)t * HD + d, acc[r][i]);
        }
    }
}

// Pass 2: dK and dV for ATT_QROWS key rows of one (batch, head), streaming over the queries with
// their lse and D (written by pass 1). Dynamic shared memory (floats): Q and dO tiles ATT_KT * ks
// each (a query row per lane; also read a row at a time across lanes), the block's K and V rows
// ATT_QROWS * D each, then ATT_KT lse and ATT_KT D values.
template <int DPL>
__device__ __forceinline__ void attn_bwd_dkdv_body(const bf16* q, const bf16* k, const bf16* v, const int* key_mask,
                                                   const bf16* dout, const float* lse, const float* drow, bf16* dk,
                                                   bf16* dv, int T, int H, int D, float scale, const AttnDrop drop) {
    extern __shared__ float smem[];
    const int ks = attn_odd_stride(D);
    float* Qs = smem;
    float* Gs = Qs + ATT_KT * ks;
    float* Kb = Gs + ATT_KT * ks;
    float* Vb = Kb + ATT_QROWS * D;
    float* Ls = Vb + ATT_QROWS * D;
    float* Ds = Ls + ATT_KT;
    const int b = blockIdx.z, h = blockIdx.y, j0 = blockIdx.x * ATT_QROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u64 HD = (u64)H * D;
    const u64 base = (u64)b * T * HD + (u64)h * D;
    const u64 row0 = ((u64)b * H + h) * T;

    for (int idx = threadIdx.x; idx < ATT_QROWS * D; idx += blockDim.x) {
        const int r = idx / D, d = idx - r * D, t = j0 + r;
        const bool in = t < T;
        Kb[idx] = in ? ldf(k, base + (u64)t * HD + d) : 0.0f;
        Vb[idx] = in ? ldf(v, base + (u64)t * HD + d) : 0.0f;
    }
    const float* kw = Kb + warp * ATT_ROWS * D;
    const float* vw = Vb + warp * ATT_ROWS * D;
    // Padding keys (and rows past T) get no gradient: their P is 0 for every query.
    bool key_ok[ATT_ROWS];
    bool any_ok = false;
#pragma unroll
    for (int r = 0; r < ATT_ROWS; ++r) {
        const int j = j0 + warp * ATT_ROWS + r;
        key_ok[r] = j < T && key_mask[(u64)b * T + j] != 0;
        any_ok = any_ok || key_ok[r];
    }

    float gk[ATT_ROWS][DPL], gv[ATT_ROWS][DPL];
#pragma unroll
    for (int r = 0; r < ATT_ROWS; ++r)
#pragma unroll
        for (int i = 0; i < DPL; ++i) gk[r][i] = gv[r][i] = 0.0f;

    for (int i0 = 0; i0 < T; i0 += ATT_KT) {
        __syncthreads();  // K/V rows written (first tile); the previous Q/dO tile fully read
        for (int idx = threadIdx.x; idx < ATT_KT * D; idx += blockDim.x) {
            const int i = idx / D, d = idx - i * D, t = i0 + i;
            float qv = 0.0f, gv_ = 0.0f;
            if (t < T) {
                const u64 off = base + (u64)t * HD + d;
                qv = ldf(q, off);
                gv_ = ldf(dout, off);
            }
            Qs[i * ks + d] = qv;
            Gs[i * ks + d] = gv_;
        }
        for (int i = threadIdx.x; i < ATT_KT; i += blockDim.x) {
            const int t = i0 + i;
            Ls[i] = t < T ? lse[row0 + t] : 0.0f;
            Ds[i] = t < T ? drow[row0 + t] : 0.0f;
        }
        __syncthreads();
        // The same for all 32 lanes: a warp whose four keys are all padding has nothing to add.
        if (!any_ok) continue;

        const int i = i0 + lane;
        const bool row_in = i < T;
        float s[ATT_ROWS], dp[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; ++r) s[r] = dp[r] = 0.0f;
        const float* qr = Qs + lane * ks;
        const float* gr = Gs + lane * ks;
#pragma unroll 4
        for (int d = 0; d < D; ++d) {
            const float qd = qr[d], gd = gr[d];
#pragma unroll
            for (int r = 0; r < ATT_ROWS; ++r) {
                s[r] += qd * kw[r * D + d];
                dp[r] += gd * vw[r * D + d];
            }
        }
        float pk[ATT_ROWS], ds[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; ++r) {
            pk[r] = ds[r] = 0.0f;
            if (key_ok[r] && row_in) {
                const float p = expf(s[r] * scale - Ls[lane]);
                const float keep = attn_keep(drop, b, h, i, j0 + warp * ATT_ROWS + r, H, T);
                pk[r] = p * keep;
                ds[r] = p * (dp[r] * keep - Ds[lane]) * scale;
            }
        }

        const int in_ = min(ATT_KT, T - i0);
        for (int ii = 0; ii < in_; ++ii) {
            float qd[DPL], gd[DPL];
#pragma unroll
            for (int c = 0; c < DPL; ++c) {
                const int d = lane + 32 * c;
                qd[c] = d < D ? Qs[ii * ks + d] : 0.0f;
                gd[c] = d < D ? Gs[ii * ks + d] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < ATT_ROWS; ++r) {
                const float pj = __shfl_sync(FULL_MASK, pk[r], ii);
                const float dsj = __shfl_sync(FULL_MASK, ds[r], ii);
#pragma unroll
                for (int c = 0; c < DPL; ++c) {
                    gv[r][c] += pj * gd[c];
                    gk[r][c] += dsj * qd[c];
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < ATT_ROWS; ++r) {
        const int t = j0 + warp * ATT_ROWS + r;
        if (t >= T) continue;
#pragma unroll
        for (int c = 0; c < DPL; ++c) {
            const int d = lane + 32 * c;
            if (d < D) {
                stf(dk, base + (u64)t * HD + d, gk[r][c]);
                stf(dv, base + (u64)t * HD + d, gv[r][c]);
            }
        }
    }
}

// Entry points by head dims per lane (head_dim <= 32, 64, 96, 128).
extern "C" __global__ void attn_bwd_dq_d32(const bf16* q, const bf16* k, const bf16* v, const int* key_mask,
                                           const bf16* out, const bf16* dout, const float* lse, float* drow, bf16* dq,
                                           int T, int H, int D, float scale, float drop_p, float drop_scale, u64 seed,
                                           u64 stream) {
    attn_bwd_dq_body<1>(q, k, v, key_mask, out, dout, lse, drow, dq, T, H, D, scale, AttnDrop{drop_p, drop_scale, seed, stream});
}
extern "C" __global__ void attn_bwd_dq_d64(const bf16* q, const bf16* k, const bf16* v, const int* key_mask,
                                           const bf16* out, const bf16* dout, const float* lse, float* drow, bf16* dq,
                                           int T, int H, int D, float scale, float drop_p, float drop_scale, u64 seed,
                                           u64 stream) {
    attn_bwd_dq_body<2>(q, k, v, key_mask, out, dout, lse, drow, dq, T, H, D, scale, AttnDrop{drop_p, drop_scale, seed, stream});
}
extern "C" __global__ void attn_bwd_dq_d96(const bf16* q, const bf16* k, const bf16* v, const int* key_mask,
                                           const bf16* out, const bf16* dout, const float* lse, float* drow, bf16* dq,
                                           int T, int H, int D, float scale, float drop_p, float drop_scale, u64 seed,
                                           u64 stream) {
    attn_bwd_dq_body<3>(q, k, v, key_mask, out, dout, lse, drow, dq, T, H, D, scale, AttnDrop{drop_p, drop_scale, seed, stream});
}
extern "C" __global__ void attn_bwd_dq_d128(const bf16* q, const bf16* k, const bf16* v, const int* key_mask,
                                            const bf16* out, const bf16* dout, const float* lse, float* drow, bf16* dq,
                                            int T, int H, int D, float scale, float drop_p, float drop_scale, u64 seed,
                                            u64 stream) {
    attn_bwd_dq_body<4>(q, k, v, key_mask, out, dout, lse, drow, dq, T, H, D, scale, AttnDrop{drop_p, drop_scale, seed, stream});
}

extern "C" __global__ void attn_bwd_dkdv_d32(const bf16* q, const bf16* k, const bf16* v, const int* key_mask,
                                             const bf16* dout, const float* lse, const float* drow, bf16* dk, bf16* dv,
                                             int T, int H, int D, float scale, float drop_p, float drop_scale, u64 seed,
                                             u64 stream) {
    attn_bwd_dkdv_body<1>(q, k, v, key_mask, dout, lse, drow, dk, dv, T, H, D, scale, AttnDrop{drop_p, drop_scale, seed, stream});
}
extern "C" __global__ void attn_bwd_dkdv_d64(const bf16* q, const bf16* k, const bf16* v, const int* key_mask,
                                             const bf16* dout, const float* lse, const float* drow, bf16* dk, bf16* dv,
                                             int T, int H, int D, float scale, float drop_p, float drop_scale, u64 seed,
                                             u64 stream) {
    attn_bwd_dkdv_body<2>(q, k, v, key_mask, dout, lse, drow, dk, dv, T, H, D, scale, AttnDrop{drop_p, drop_scale, seed, stream});
}
extern "C" __global__ void attn_bwd_dkdv_d96(const bf16* q, const bf16* k, const bf16* v, const int* key_mask,
                                             const bf16* dout, const float* lse, const float* drow, bf16* dk, bf16* dv,
                                             int T, int H, int D, float scale, float drop_p, float drop_scale, u64 seed,
                                             u64 stream) {
    attn_bwd_dkdv_body<3>(q, k, v, key_mask, dout, lse, drow, dk, dv, T, H, D, scale, AttnDrop{drop_p, drop_scale, seed, stream});
}
extern "C" __global__ void attn_bwd_dkdv_d128(const bf16* q, const bf16* k, const bf16* v, const int* key_mask,
                                              const bf16* dout, const float* lse, const float* drow, bf16* dk, bf16* dv,
                                              int T, int H, int D, float scale, float drop_p, float drop_scale, u64 seed,
                                              u64 stream) {
    attn_bwd_dkdv_body<4>(q, k, v, key_mask, dout, lse, drow, dk, dv, T, H, D, scale, AttnDrop{drop_p, drop_scale, seed, stream});
}
