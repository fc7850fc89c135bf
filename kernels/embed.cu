// Word + position + token-type embeddings. CPU twin: src/backend/cpu/embed.rs.
// Ids are checked on the host before launch (the tables' sizes are known there).
#include "common.cuh"

// One block per token, threads over the hidden columns.
// out[i] = (word[ids[i]] + typ[0]) + pos[pos_ids[i]], in f32 in HF's association order, rounded once.
extern "C" __global__ void embed_fwd_bf16(const int* ids, const int* pos_ids, const bf16* word, const bf16* pos,
                                          const bf16* typ, bf16* out, int tokens, int hidden) {
    const int i = blockIdx.x;
    if (i >= tokens) return;
    const u64 w = (u64)ids[i] * hidden, p = (u64)pos_ids[i] * hidden, o = (u64)i * hidden;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        stf(out, o + c, (ldf(word, w + c) + ldf(typ, c)) + ldf(pos, p + c));
    }
}

// Scatter-add of dout into the f32 gradients of the word and position tables. Repeated ids
// collide, so the adds are atomic (their order, and so the last bits, vary from run to run).
// The token-type gradient is a plain column sum (col_sum_add in rows.cu). Rows at padding_idx of
// the word and position tables get no gradient, as with nn.Embedding(padding_idx=...).
extern "C" __global__ void embed_bwd_bf16(const int* ids, const int* pos_ids, const bf16* dout, float* dword,
                                          float* dpos, int tokens, int hidden, int padding_idx) {
    const int i = blockIdx.x;
    if (i >= tokens) return;
    const bool word_ok = ids[i] != padding_idx, pos_ok = pos_ids[i] != padding_idx;
    const u64 w = (u64)ids[i] * hidden, p = (u64)pos_ids[i] * hidden, o = (u64)i * hidden;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        const float g = ldf(dout, o + c);
        if (word_ok) atomicAdd(dword + w + c, g);
        if (pos_ok) atomicAdd(dpos + p + c, g);
    }
}
