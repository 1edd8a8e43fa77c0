//! sampling.cu — greedy sampling over a vocabulary sharded across ranks: a per-rank argmax over the
//! local logits columns, then (after an all-gather of the (value, index) pairs) the global pick.
//
// Ties go to the smallest GLOBAL index everywhere (within a rank and across ranks), so the chosen
// token does not depend on the world size. NaN never wins.

// argmax_rows: for row r of logits (n_rows, cols) f32 row-major (this rank's vocab shard, whose
// first column is global index col0):
//   out_pair[2r]     = best value (NaN and -inf never win; an all-NaN/-inf row gives -inf)
//   out_pair[2r + 1] = __int_as_float(col0 + j_best) (ties: smallest j; all-NaN/-inf row: col0)
//
// Launch: grid = (n_rows, 1, 1), block = 1024 (any multiple of 32 up to 1024), shared = 0
//   (static 256 B).
// Helpers (to_f32, from_f32, unpack8, reductions, NEG_INF) come from common.cuh, compiled in front of this file.
#define ARGMAX_NONE 0x7fffffff


// (v, i) beats (bv, bi): larger value, or same value and smaller index.
__device__ __forceinline__ bool beats(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);
}

extern "C" __global__ void __launch_bounds__(1024) argmax_rows(const float* __restrict__ logits, int n_rows, int cols,
                                                               int col0, float* __restrict__ out_pair) {
    pdl_wait();
    __shared__ float red_v[32];
    __shared__ int red_i[32];
    const int r = blockIdx.x;
    if (r >= n_rows) return;  // block-uniform
    const float* row = logits + (long long)r * cols;
    // Candidates must be > -inf: excludes -inf and NaN (every comparison with NaN is false).
    float bv = NEG_INF;
    int bi = ARGMAX_NONE;
#pragma unroll 4
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        const float v = row[j];
        // j increases per thread, so strict > keeps the smallest index among equal values.
        if (v > bv) { bv = v; bi = j; }
    }
    // Warp reduce; an empty slot (bi = NONE, bv = -inf) never beats a real one (bv > -inf), and
    // among empty slots the result stays empty.
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (beats(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    if (lane == 0) { red_v[warp] = bv; red_i[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        bv = lane < n_warps ? red_v[lane] : NEG_INF;
        bi = lane < n_warps ? red_i[lane] : ARGMAX_NONE;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (beats(ov, oi, bv, bi)) { bv = ov; bi = oi; }
        }
        if (lane == 0) {
            if (bi == ARGMAX_NONE) { bv = NEG_INF; bi = 0; }
            out_pair[2 * (long long)r] = bv;
            out_pair[2 * (long long)r + 1] = __int_as_float(col0 + bi);
        }
    }
}

// select_tokens: gathered is the rank-major all-gather of every rank's out_pair:
//   gathered[((long long)w * n_rows + r) * 2 + {0: value, 1: __int_as_float(global index)}].
// tokens_out[r] = the index with the largest value over w (ties: smallest index, across ranks too);
// then row_pos[r] += 1 when row_pos != nullptr (advances the decode position for the next step).
//
// Launch: grid = (ceil(n_rows / 128), 1, 1), block = 128 (one thread per row; any size works), shared = 0.
extern "C" __global__ void select_tokens(const float* __restrict__ gathered, int world, int n_rows,
                                         int* __restrict__ tokens_out, int* __restrict__ row_pos) {
    pdl_wait();
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_rows) return;
    float bv = gathered[2 * (long long)r];
    int bi = __float_as_int(gathered[2 * (long long)r + 1]);
    for (int w = 1; w < world; ++w) {
        const long long o = ((long long)w * n_rows + r) * 2;
        const float v = gathered[o];
        const int i = __float_as_int(gathered[o + 1]);
        if (beats(v, i, bv, bi)) { bv = v; bi = i; }
    }
    tokens_out[r] = bi;
    if (row_pos) row_pos[r] += 1;
}
