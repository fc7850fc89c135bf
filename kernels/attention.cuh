// What the attention forward (attention.cu) and backward (attention_bwd.cu) share: the block
// geometry and the attention-probability dropout decision.
#pragma once
#include "common.cuh"

// A block is ATT_WARPS warps; each warp owns ATT_ROWS rows (query rows in the forward and the dQ
// pass, key rows in the dK/dV pass), so a block owns ATT_QROWS rows of one (batch, head). The
// other side streams through shared memory in tiles of ATT_KT = 32, one tile row per lane.
#define ATT_WARPS 4
#define ATT_ROWS 4
#define ATT_QROWS (ATT_WARPS * ATT_ROWS)
#define ATT_KT 32

// Row stride of a tile that lanes read a row each: odd, so the 32 lanes' rows fall in 32 banks.
__device__ __forceinline__ int attn_odd_stride(int D) { return (D & 1) ? D : D + 1; }

// Attention-probability dropout, the CPU's `fill_keep` (src/backend/cpu/attention.rs): probability
// (b, h, i, j) is Philox number ((b·H + h)·T + i)·T + j of stream (seed, stream), kept (and scaled
// by 1/(1-p), computed on the host in f32) when its 24-bit uniform is >= p. p = 0: always 1.
struct AttnDrop {
    float p, scale;
    u64 seed, stream;
};

__device__ __forceinline__ float attn_keep(const AttnDrop& dr, int b, int h, int i, int j, int H, int T) {
    if (!(dr.p > 0.0f)) return 1.0f;
    const u64 idx = (((u64)b * H + h) * T + i) * T + j;
    return philox_uniform(dr.seed, dr.stream, idx) >= dr.p ? dr.scale : 0.0f;
}
