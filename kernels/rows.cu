// Row movement and reductions over rows: gather, scatter-add, column sums (the bias and
// token-type gradients). CPU twins: CpuBackend::{gather_rows, scatter_add_rows},
// cpu::linear::col_sums_add. Row indices are checked on the host before launch.
#include "common.cuh"

// One block per output row: out[r] = x[rows[r]].
extern "C" __global__ void gather_rows_bf16(const bf16* x, const int* rows, bf16* out, int n_rows, int cols) {
    const int r = blockIdx.x;
    if (r >= n_rows) return;
    const u64 src = (u64)rows[r] * cols, dst = (u64)r * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[dst + c] = x[src + c];
}

// One block per source row: dx[rows[r]] += dout[r]. Rows are distinct, so no atomics.
template <typename TD>
__device__ __forceinline__ void scatter_add_body(const bf16* dout, const int* rows, TD* dx, int n_rows, int cols) {
    const int r = blockIdx.x;
    if (r >= n_rows) return;
    const u64 src = (u64)r * cols, dst = (u64)rows[r] * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) stf(dx, dst + c, ldf(dx, dst + c) + ldf(dout, src + c));
}
extern "C" __global__ void scatter_add_rows_bf16(const bf16* dout, const int* rows, bf16* dx, int n_rows, int cols) {
    scatter_add_body(dout, rows, dx, n_rows, cols);
}
extern "C" __global__ void scatter_add_rows_f32(const bf16* dout, const int* rows, float* dx, int n_rows, int cols) {
    scatter_add_body(dout, rows, dx, n_rows, cols);
}

// acc[c] += sum_r x[r, c]. Block (32, COLSUM_Y) covers 32 columns and COLSUM_ROWS rows; the
// partial column sums of the blocks stacked along y meet in one f32 atomic add each.
#define COLSUM_Y 8
#define COLSUM_ROWS 256
extern "C" __global__ void col_sum_add_bf16(const bf16* x, float* acc, int rows, int cols) {
    __shared__ float part[COLSUM_Y][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * COLSUM_ROWS;
    const int r1 = min(rows, r0 + COLSUM_ROWS);
    float s = 0.0f;
    if (c < cols)
        for (int r = r0 + threadIdx.y; r < r1; r += COLSUM_Y) s += ldf(x, (u64)r * cols + c);
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float t = 0.0f;
        for (int y = 0; y < COLSUM_Y; ++y) t += part[y][threadIdx.x];
        atomicAdd(acc + c, t);
    }
}

// One block per source row: out[rows[r]] = x[r] (the prefix cache's keys and values of the rows
// a cached step recomputes). Rows are distinct.
template <typename TO>
__device__ __forceinline__ void scatter_body(const bf16* x, const int* rows, TO* out, int n_rows, int cols) {
    const int r = blockIdx.x;
    if (r >= n_rows) return;
    const u64 src = (u64)r * cols, dst = (u64)rows[r] * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) stf(out, dst + c, ldf(x, src + c));
}
extern "C" __global__ void scatter_rows_bf16(const bf16* x, const int* rows, bf16* out, int n_rows, int cols) {
    scatter_body(x, rows, out, n_rows, cols);
}
extern "C" __global__ void scatter_rows_f32(const bf16* x, const int* rows, float* out, int n_rows, int cols) {
    scatter_body(x, rows, out, n_rows, cols);
}
