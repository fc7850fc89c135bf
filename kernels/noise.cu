// The RDM training noise (docs/method.md §3) on the device: coupled timesteps, nested masks over the
// maskable slots, `<mask>` scattered into the doubled batch and the masked slots gathered as loss
// rows. CPU twin: rdm::noise::q_sample_flat (src/rdm/noise.rs), which draws the same
// Philox numbers, so both give the same masks bit for bit.
//
// The doubled batch ids is [2B, seq]: rows b and B+b hold example b. Two launches:
//   q_sample_mask     one block per example: its two timesteps, the masks of both copies (flags),
//                     the masked count and the weight of each copy;
//   q_sample_compact  one block per row of the doubled batch: the row's offset (the masked slots
//                     of earlier rows), then its masked slots in order.
#include "common.cuh"
#include "contract.cuh"

// t ~ U{1..T} from one Philox number: a 32x32-bit multiply (as noise::coupled_t).
__device__ __forceinline__ u32 draw_t(u64 key, u64 ex, u64 idx, u32 steps) {
    return 1u + (u32)(((u64)philox_u32(key, ex, idx) * steps) >> 32);
}

// u < num/den for the 24-bit uniform u = r >> 8 (as noise::slot_masks: exact integer compare).
__device__ __forceinline__ bool below(u32 r, u32 num, u32 den) {
    return (u64)(r >> 8) * den < ((u64)num << 24);
}

// T·λ(t) of noise::Reweighting, by its contract.cuh code.
__device__ __forceinline__ float reweight(int rw, u32 t, u32 steps) {
    return rw == DLM_REWEIGHT_LINEAR       ? (float)(steps - t + 1)
           : rw == DLM_REWEIGHT_RECIPROCAL ? (float)steps / (float)t
                                           : (float)steps;
}

// `first_ex` is the batch's first example in the global batch of a data-parallel step: Philox
// stream `first_ex + ex` draws example ex's noise, so a rank's share equals its rows of the whole.
extern "C" __global__ void q_sample_mask(const int* ids, const int* src_len, int n_ex, int seq, int pad, u32 steps, u64 key,
                                         u64 first_ex, int rw, float scale, int* flags, int* counts, float* row_w) {
    const int ex = blockIdx.x;
    if (ex >= n_ex) return;  // uniform per block
    const u64 stream = first_ex + (u64)ex;
    const u32 t1 = draw_t(key, stream, 0, steps), t2 = draw_t(key, stream, 1, steps);
    const u32 ta = t1 > t2 ? t1 : t2, tb = t1 > t2 ? t2 : t1;
    const int src = src_len[ex];
    const int* row = ids + (u64)ex * seq;
    int* fa = flags + (u64)ex * seq;
    int* fb = flags + (u64)(n_ex + ex) * seq;
    int n_maskable = 0, na = 0, nb = 0;
    for (int j = threadIdx.x; j < seq; j += blockDim.x) {
        bool a = false, b = false;
        if (j >= src && row[j] != pad) {
            // Numbers 2+2j and 3+2j: lanes 0,1 or 2,3 of Philox block (2+2j)/4.
            const u64 idx = 2 + 2 * (u64)j;
            const uint4 r = philox_block(key, stream, idx >> 2);
            const u32 ua = uint4_lane(r, (u32)(idx & 3)), ub = uint4_lane(r, (u32)(idx & 3) + 1);
            a = below(ua, ta, steps);
            b = ta != tb ? a && below(ub, tb, ta) : below(ub, ta, steps);
            ++n_maskable;
        }
        fa[j] = a;
        fb[j] = b;
        na += a;
        nb += b;
    }
    n_maskable = block_sum(n_maskable);
    na = block_sum(na);
    nb = block_sum(nb);
    if (threadIdx.x == 0) {
        const float n = (float)(n_maskable > 1 ? n_maskable : 1), rows2 = (float)(2 * n_ex);
        counts[ex] = na;
        counts[n_ex + ex] = nb;
        row_w[ex] = reweight(rw, ta, steps) / n / rows2 * scale;
        row_w[n_ex + ex] = reweight(rw, tb, steps) / n / rows2 * scale;
    }
}

// Exclusive prefix sum of v over the block (blockDim.x a multiple of 32); *total gets the sum.
__device__ int block_exclusive_scan(int v, int* total) {
    __shared__ int warp_total[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    int x = v;
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(FULL_MASK, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) warp_total[warp] = x;
    __syncthreads();
    int before = 0, sum = 0;
    for (int w = 0; w < nwarps; ++w) {
        before += w < warp ? warp_total[w] : 0;
        sum += warp_total[w];
    }
    __syncthreads();  // the next call's writes wait for every read of this one
    *total = sum;
    return before + x - v;
}

extern "C" __global__ void q_sample_compact(int* ids, const int* flags, const int* counts, const float* row_w, int rows2, int seq,
                                            int mask_id, int* out_rows, int* out_targets, float* out_w, int* total) {
    const int r = blockIdx.x;
    if (r >= rows2) return;  // uniform per block
    int before = 0;
    for (int i = threadIdx.x; i < r; i += blockDim.x) before += counts[i];
    int off = block_sum(before);
    const float w = row_w[r];
    for (int base = 0; base < seq; base += blockDim.x) {
        const int j = base + threadIdx.x;
        const u64 flat = (u64)r * seq + j;
        const int f = j < seq ? flags[flat] : 0;
        int chunk;
        const int k = off + block_exclusive_scan(f, &chunk);
        if (f) {
            out_rows[k] = (int)flat;
            out_targets[k] = ids[flat];
            out_w[k] = w;
            ids[flat] = mask_id;
        }
        off += chunk;
    }
    if (r == rows2 - 1 && threadIdx.x == 0) *total = off;
}
