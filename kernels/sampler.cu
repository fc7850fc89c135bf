// The sampler's pass over the vocabulary. CPU twin: cpu::vocab::vocab_pick.
// Per row of logits, over the columns c < valid that are not forbidden: the argmax (or, with
// Gumbel noise, the Gumbel-max sample of softmax(logits / temperature)), and the log-softmax at
// temperature 1 of the picked id. One block per row, one read of the row.
#include "common.cuh"

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
extern "C" __global__ void vocab_pick_bf16(const bf16* logits, int rows, int vocab, int valid, const int* forbid,
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
    for (int g = threadIdx.x; g < groups; g += blockDim.x) {
        uint4 noise = make_uint4(0, 0, 0, 0);
        if (use_gumbel) noise = philox_block(seed, noise_stream, (u64)g);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int c = g * 4 + q;
            if (c >= valid) break;
            bool allowed = true;
            for (int f = 0; f < n_forbid; ++f) allowed = allowed && forb[f] != c;
            if (!allowed) continue;
            const float x = ldf(logits, base + c);
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
