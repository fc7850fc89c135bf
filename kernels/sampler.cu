// The sampler's pass over the vocabulary. CPU twin: cpu::vocab::vocab_pick.
// Per row of logits, over the columns c < valid that are not forbidden: the argmax (or, with
// Gumbel noise, the Gumbel-max sample of softmax(logits / temperature)), and the log-softmax at
// temperature 1 of the picked id. One block per row, one read of the row.
#include "common.cuh"
#include "contract.cuh"

#define NO_PICK 0x7fffffff

// The better of two (key, id) candidates: higher key, then lower id (torch.argmax keeps the first).
__device__ __forceinline__ void pick_merge(float& key, int& id, float key2, int id2) {
    if (key2 > key || (key2 == key && id2 < id)) {
        key = key2;
        id = id2;
    }
}

// Dynamic shared memory: n_forbid ints. Gumbel noise for column c of row r is number c of
// Philox stream (seed_r, stream_r), seed_r = seeds[2r] << 32 | seeds[2r+1]; each thread takes
// aligned groups of 4 columns, one Philox block each. `seeds` and `streams` are unused (may be
// null) without Gumbel noise.
extern "C" __global__ void __launch_bounds__(1024) vocab_pick_bf16(const bf16* logits, int rows, int vocab, int valid, const int* forbid,
                                           int n_forbid, float temperature, int use_gumbel, const int* seeds,
                                           const int* streams, int* out_token, float* out_logprob) {
    extern __shared__ int forb[];
    __shared__ float wkey[32];
    __shared__ int wid[32];
    for (int i = threadIdx.x; i < n_forbid; i += blockDim.x) forb[i] = forbid[i];
    __syncthreads();
    const int r = blockIdx.x;
    if (r >= rows) return;  // uniform per block
    const u64 base = (u64)r * vocab;
    u64 seed = 0, noise_stream = 0;
    if (use_gumbel) {
        seed = ((u64)(unsigned)seeds[2 * r] << 32) | (u64)(unsigned)seeds[2 * r + 1];
        noise_stream = (u64)(unsigned)streams[r];
    }

    float m = -INFINITY, s = 0.0f;      // log-sum-exp of the allowed logits
    float key = -INFINITY;              // best key so far; candidates must beat -inf strictly
    int id = NO_PICK;
    const int groups = (valid + 3) >> 2;
    // Rows start 8-byte aligned when vocab is a multiple of 4 (the padded head always is) and the
    // buffer is: then a group's four logits are one 8-byte load.
    const bool vec4 = (vocab & 3) == 0 && (reinterpret_cast<u64>(logits) & 7) == 0;
    for (int g = threadIdx.x; g < groups; g += blockDim.x) {
        uint4 noise = make_uint4(0, 0, 0, 0);
        if (use_gumbel) noise = philox_block(seed, noise_stream, (u64)g);
        __align__(8) bf16 xs[4];  // stored through a uint2
        if (vec4 && g * 4 + 3 < vocab) {
            *reinterpret_cast<uint2*>(xs) = reinterpret_cast<const uint2*>(logits + base)[g];
        } else {
#pragma unroll
            for (int q = 0; q < 4; ++q) xs[q] = g * 4 + q < vocab ? logits[base + g * 4 + q] : logits[base];
        }
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int c = g * 4 + q;
            if (c >= valid) break;
            bool allowed = true;
            for (int f = 0; f < n_forbid; ++f) allowed = allowed && forb[f] != c;
            if (!allowed) continue;
            const float x = __bfloat162float(xs[q]);
            lse_merge(m, s, x, 1.0f);
            const float k = use_gumbel ? x / temperature + gumbel_from_u32(uint4_lane(noise, q)) : x;
            if (k > key) {  // columns rise within a thread, so strict > keeps the lowest id
                key = k;
                id = c;
            }
        }
    }

    block_lse_merge(m, s);
    for (int o = 16; o > 0; o >>= 1) {
        const float k2 = __shfl_xor_sync(FULL_MASK, key, o);
        const int i2 = __shfl_xor_sync(FULL_MASK, id, o);
        pick_merge(key, id, k2, i2);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) {
        wkey[warp] = key;
        wid[warp] = id;
    }
    __syncthreads();
    if (warp == 0) {
        key = lane < nwarps ? wkey[lane] : -INFINITY;
        id = lane < nwarps ? wid[lane] : NO_PICK;
        for (int o = 16; o > 0; o >>= 1) {
            const float k2 = __shfl_xor_sync(FULL_MASK, key, o);
            const int i2 = __shfl_xor_sync(FULL_MASK, id, o);
            pick_merge(key, id, k2, i2);
        }
        if (lane == 0) {
            // Nothing allowed (or every key -inf/NaN): id 0, as the CPU's initial best.
            const int tok = id == NO_PICK ? 0 : id;
            out_token[r] = tok;
            out_logprob[r] = ldf(logits, base + tok) - (m + logf(s));
        }
    }
}

// One step per canvas, one block each, on the slots of the step's window [lo, hi) of the canvas
// (a block of the target; the whole target without blocks). CPU twin: cpu/sampler.rs. The
// canvases' slots are flat arrays (tokens, scores, masked); this step's picks (token, log-prob)
// and the values ranked (`rank`: the log-prob or another confidence) are in the same order.
// `canvases` and `step` hold DLM_CANVAS_FIELDS and DLM_STEP_FIELDS i32 per canvas (contract.cuh).
// - DLM_MODE_TOPK: the ranking, the lowest set and the slot update of rdm::remask (`lowest_set`,
//   `reparam_update`) with k and the ranking noise of the step;
// - DLM_MODE_THRESHOLD: every masked slot ranked at least at the cut takes its pick, or, when none
//   is, the best-ranked masked slot (the first on ties; NaN ranks lowest); nothing is re-masked.
// Every slot's token is written to `ids` at the canvas's positions, ready for the next forward,
// and the number of masked slots left in the window to `left[canvas]`.
// Dynamic shared memory: one float per slot of the widest window.
extern "C" __global__ void reparam_step(const int* canvases, const int* step, const int* pick_token,
                                        const float* pick_lp, const float* rank, int* tokens, float* scores, int* masked,
                                        int* ids, int* left, int cond, int noise, u64 seed, int mask_id) {
    extern __shared__ float ranked[];
    __shared__ float cutoff;
    __shared__ int sure, best, remaining;
    const int b = blockIdx.x;
    const int* cv = canvases + DLM_CANVAS_FIELDS * b;
    const int* st = step + DLM_STEP_FIELDS * b;
    const int s0 = cv[DLM_CANVAS_FIRST], n = cv[DLM_CANVAS_LEN], pos0 = cv[DLM_CANVAS_POS0];
    const int k = st[DLM_STEP_K];
    const u64 stream = ((u64)(u32)st[DLM_STEP_STREAM_HI] << 32) | (u64)(u32)st[DLM_STEP_STREAM_LO];
    const float scale = __int_as_float(st[DLM_STEP_SCALE]);
    const int lo = st[DLM_STEP_LO], w = st[DLM_STEP_HI] - lo;  // the host checks 0 <= lo <= hi <= n
    const float cut = __int_as_float(st[DLM_STEP_CUT]);
    const int w0 = s0 + lo;  // the window's first slot in the flat arrays
    for (int j = threadIdx.x; j < w; j += blockDim.x) {
        float v = rank[w0 + j];
        // Unfused, as the host computes it.
        if (noise) v = __fadd_rn(v, __fmul_rn(scale, philox_gumbel(seed, stream, (u64)j)));
        ranked[j] = v;
    }
    if (threadIdx.x == 0) {
        cutoff = DLM_NON_TARGET_SCORE;  // k >= w takes every slot
        sure = 0;
        best = -1;
        remaining = 0;
    }
    __syncthreads();
    if (st[DLM_STEP_MODE] == DLM_MODE_TOPK) {
        if (k < w) {
            // The cutoff is the k-th smallest ranked value in f32::total_cmp order (the host sorts):
            // slot j holds sorted positions [less, less_eq) of the keys.
            for (int j = threadIdx.x; j < w; j += blockDim.x) {
                const int kj = total_order_key(ranked[j]);
                int less = 0, less_eq = 0;
                for (int i = 0; i < w; ++i) {
                    const int ki = total_order_key(ranked[i]);
                    less += ki < kj;
                    less_eq += ki <= kj;
                }
                if (less <= k && k < less_eq) cutoff = ranked[j];  // equal keys write equal values
            }
        }
        __syncthreads();
        for (int j = threadIdx.x; j < w; j += blockDim.x) {
            const int t = w0 + j;
            const bool was_masked = masked[t] != 0;
            const int cur = pick_token[t];
            const float cur_lp = pick_lp[t];
            const bool to_mask = ranked[j] < cutoff && (!cond || was_masked || (cur == tokens[t] && cur_lp < scores[t]));
            if (to_mask) {
                tokens[t] = mask_id;
                scores[t] = -INFINITY;
                masked[t] = 1;
            } else if (was_masked) {
                tokens[t] = cur;
                scores[t] = cur_lp;
                masked[t] = 0;
            }
        }
    } else {
        for (int j = threadIdx.x; j < w; j += blockDim.x)
            if (masked[w0 + j] && ranked[j] >= cut) atomicAdd(&sure, 1);
        __syncthreads();
        if (threadIdx.x == 0 && sure == 0) {
            float top = -INFINITY;
            for (int j = 0; j < w; ++j) {
                const float v = ranked[j] != ranked[j] ? -INFINITY : ranked[j];  // NaN ranks lowest
                if (masked[w0 + j] && (best < 0 || v > top)) {
                    best = j;
                    top = v;
                }
            }
        }
        __syncthreads();
        for (int j = threadIdx.x; j < w; j += blockDim.x) {
            const int t = w0 + j;
            if (masked[t] && (ranked[j] >= cut || j == best)) {
                tokens[t] = pick_token[t];
                scores[t] = pick_lp[t];
                masked[t] = 0;
            }
        }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < n; j += blockDim.x) ids[pos0 + j] = tokens[s0 + j];
    for (int j = threadIdx.x; j < w; j += blockDim.x)
        if (masked[w0 + j]) atomicAdd(&remaining, 1);
    __syncthreads();
    if (threadIdx.x == 0) left[b] = remaining;
}

// A slot's confidence other than the pick's log-prob, for the samplers that rank by it. CPU twin:
// cpu::sampler::vocab_confidence. Per row, over the allowed columns c < valid (forbidden ids and
// padding excluded), of p = softmax(logits):
//   kind 1 (margin):  p(top1) - p(top2)   (0 with a single allowed column)
//   kind 2 (entropy): -H(p) = sum p·x - logsumexp(x)
// One block per row; each thread keeps its two largest logits and a log-sum-exp accumulator
// (m, s) with t = sum exp(x - m)·x, merged across the block through shared memory.
struct ConfAcc {
    float top1, top2, m, s, t;
};

__device__ __forceinline__ void conf_merge(ConfAcc& a, const ConfAcc& b) {
    if (b.top1 > a.top1) {
        a.top2 = fmaxf(a.top1, b.top2);
        a.top1 = b.top1;
    } else {
        a.top2 = fmaxf(a.top2, b.top1);
    }
    if (b.m == -INFINITY) return;
    if (a.m == -INFINITY) {
        a.m = b.m;
        a.s = b.s;
        a.t = b.t;
    } else if (b.m > a.m) {
        const float f = expf(a.m - b.m);
        a.s = a.s * f + b.s;
        a.t = a.t * f + b.t;
        a.m = b.m;
    } else {
        const float f = expf(b.m - a.m);
        a.s += b.s * f;
        a.t += b.t * f;
    }
}

extern "C" __global__ void __launch_bounds__(1024) vocab_confidence_bf16(const bf16* logits, int rows, int vocab, int valid,
                                                                     const int* forbid, int n_forbid, int kind, float* out) {
    extern __shared__ int forb[];
    __shared__ ConfAcc part[32];
    for (int i = threadIdx.x; i < n_forbid; i += blockDim.x) forb[i] = forbid[i];
    __syncthreads();
    const int r = blockIdx.x;
    if (r >= rows) return;  // uniform per block
    const u64 base = (u64)r * vocab;
    ConfAcc a = {-INFINITY, -INFINITY, -INFINITY, 0.0f, 0.0f};
    for (int c = threadIdx.x; c < valid; c += blockDim.x) {
        bool allowed = true;
        for (int f = 0; f < n_forbid; ++f) allowed = allowed && forb[f] != c;
        if (!allowed) continue;
        const float x = ldf(logits, base + c);
        const ConfAcc one = {x, -INFINITY, x, 1.0f, x};
        conf_merge(a, one);
    }
    for (int o = 16; o > 0; o >>= 1) {
        ConfAcc b;
        b.top1 = __shfl_xor_sync(FULL_MASK, a.top1, o);
        b.top2 = __shfl_xor_sync(FULL_MASK, a.top2, o);
        b.m = __shfl_xor_sync(FULL_MASK, a.m, o);
        b.s = __shfl_xor_sync(FULL_MASK, a.s, o);
        b.t = __shfl_xor_sync(FULL_MASK, a.t, o);
        conf_merge(a, b);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) part[warp] = a;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < nwarps; ++w) conf_merge(a, part[w]);
        const float lse = a.m + logf(a.s);
        float v;
        if (a.m == -INFINITY) {
            v = -INFINITY;  // nothing allowed
        } else if (kind == 1) {
            v = expf(a.top1 - lse) - (a.top2 == -INFINITY ? 0.0f : expf(a.top2 - lse));
        } else {
            v = a.t / a.s - lse;
        }
        out[r] = v;
    }
}

// Unsupervised classifier-free guidance on the logits, in place: rows [0, rows) are the
// conditional rows and rows [rows, 2·rows) the same slots with the prompt masked;
// cond <- uncond + (scale + 1)·(cond - uncond). CPU twin: cpu::sampler::cfg_combine.
template <typename T>
__device__ __forceinline__ void cfg_body(T* logits, int rows, int vocab, float scale) {
    const u64 n = (u64)rows * vocab;
    GRID_STRIDE(i, n) {
        const float c = ldf(logits, i), u = ldf(logits, i + n);
        // Unfused, as the host computes it.
        stf(logits, i, __fadd_rn(u, __fmul_rn(scale + 1.0f, __fsub_rn(c, u))));
    }
}
extern "C" __global__ void cfg_combine_bf16(bf16* logits, int rows, int vocab, float scale) { cfg_body(logits, rows, vocab, scale); }
extern "C" __global__ void cfg_combine_f32(float* logits, int rows, int vocab, float scale) { cfg_body(logits, rows, vocab, scale); }
