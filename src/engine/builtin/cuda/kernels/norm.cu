//! norm.cu — residual add + RMSNorm, and the embedding gather into the f32 residual stream.
//
// The residual stream is kept in f32 (as in the cpu engine); only the normalized activations
// that feed GEMMs are rounded to T (__half or __nv_bfloat16).

// Helpers (to_f32, from_f32, unpack8, reductions, NEG_INF) come from common.cuh, compiled in front of this file.


// add_rmsnorm: per row r (resid and out are (n_rows, hidden) row-major):
//   if delta != nullptr: resid[r, :] += to_f32(delta[r, :])      (written back to resid)
//   out[r, j] = T( (resid[r, j] * inv_rms) * weight[j] ),  inv_rms = 1 / sqrtf(sum_j resid² / hidden + eps)
// Numerics: f32 throughout, like the cpu engine (sum of squares in f32: per-thread FMA partials,
// then a shuffle tree, which is more accurate than the CPU's sequential sum; the result differs
// from the CPU only by summation order). 1/sqrtf is IEEE (no fast-math): __fdiv_rn, __fsqrt_rn.
//
// Launch: grid = (n_rows, 1, 1), block = 256 (any multiple of 32 up to 1024), shared = 0.
// In place is fine for resid; out must not alias resid or delta.
// Rows of up to RN_EPT * blockDim.x elements (8 192 with the decode's 1 024 threads) stay in
// registers between the sum and the scaling; longer rows are walked twice (the second loop).
#define RN_EPT 8
template <typename T>
__device__ __forceinline__ void add_rmsnorm_impl(float* __restrict__ resid, const T* __restrict__ delta,
                                                 const float* __restrict__ weight, T* __restrict__ out,
                                                 int n_rows, int hidden, float eps) {
    __shared__ float red[32];
    const int r = blockIdx.x;
    if (r >= n_rows) return;  // block-uniform
    float* x = resid + (long long)r * hidden;
    const T* dl = delta ? delta + (long long)r * hidden : nullptr;
    float ss = 0.0f;
    if (hidden <= RN_EPT * (int)blockDim.x) {  // block-uniform: the row fits the registers
        // The same arithmetic in the same order as the loop below, with every load (resid, delta,
        // weight) issued up front and the row kept in registers: one memory round trip before the
        // reduction instead of two after it (decode: 97 launches per step, each latency-bound).
        float v[RN_EPT], w[RN_EPT];
#pragma unroll
        for (int i = 0; i < RN_EPT; ++i) {
            const int j = threadIdx.x + i * blockDim.x;
            v[i] = j < hidden ? x[j] : 0.0f;
            w[i] = j < hidden ? weight[j] : 0.0f;
            if (dl && j < hidden) v[i] = __fadd_rn(v[i], to_f32(dl[j]));
        }
#pragma unroll
        for (int i = 0; i < RN_EPT; ++i) {
            const int j = threadIdx.x + i * blockDim.x;
            if (j < hidden) {
                if (dl) x[j] = v[i];
                ss = fmaf(v[i], v[i], ss);
            }
        }
        ss = block_sum(ss, red);
        const float mean_square = __fdiv_rn(ss, (float)hidden);
        const float inv_rms = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean_square, eps)));
        T* o = out + (long long)r * hidden;
#pragma unroll
        for (int i = 0; i < RN_EPT; ++i) {
            const int j = threadIdx.x + i * blockDim.x;
            if (j < hidden) o[j] = from_f32<T>(__fmul_rn(__fmul_rn(v[i], inv_rms), w[i]));
        }
        return;
    }
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        float v = x[j];
        if (dl) {
            v = __fadd_rn(v, to_f32(dl[j]));
            x[j] = v;
        }
        ss = fmaf(v, v, ss);
    }
    ss = block_sum(ss, red);
    const float mean_square = __fdiv_rn(ss, (float)hidden);
    const float inv_rms = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean_square, eps)));
    T* o = out + (long long)r * hidden;
    // Each thread re-reads exactly the elements it wrote above (same j mapping): no sync needed.
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        o[j] = from_f32<T>(__fmul_rn(__fmul_rn(x[j], inv_rms), weight[j]));
    }
}

extern "C" __global__ void __launch_bounds__(1024) add_rmsnorm_f16(float* resid, const __half* delta, const float* weight,
                                                                   __half* out, int n_rows, int hidden, float eps) {
    pdl_wait();
    add_rmsnorm_impl<__half>(resid, delta, weight, out, n_rows, hidden, eps);
}

extern "C" __global__ void __launch_bounds__(1024) add_rmsnorm_bf16(float* resid, const __nv_bfloat16* delta, const float* weight,
                                                                    __nv_bfloat16* out, int n_rows, int hidden, float eps) {
    pdl_wait();
    add_rmsnorm_impl<__nv_bfloat16>(resid, delta, weight, out, n_rows, hidden, eps);
}

// embedding: out[r, j] = to_f32(table[tokens[r] * hidden + j]) (f32 residual stream, (n_rows, hidden)).
// tokens[r] must be in [0, vocab) (not checked). Offsets in long long (vocab * hidden > 2^31).
// Launch: grid = (n_rows, 1, 1), block = 256 (any size), shared = 0.
template <typename T>
__device__ __forceinline__ void embedding_impl(const T* __restrict__ table, const int* __restrict__ tokens,
                                               float* __restrict__ out, int n_rows, int hidden) {
    const int r = blockIdx.x;
    if (r >= n_rows) return;
    const T* src = table + (long long)tokens[r] * hidden;
    float* dst = out + (long long)r * hidden;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = to_f32(src[j]);
}

extern "C" __global__ void embedding_f16(const __half* table, const int* tokens, float* out, int n_rows, int hidden) {
    pdl_wait();
    embedding_impl<__half>(table, tokens, out, n_rows, hidden);
}

extern "C" __global__ void embedding_bf16(const __nv_bfloat16* table, const int* tokens, float* out, int n_rows, int hidden) {
    pdl_wait();
    embedding_impl<__nv_bfloat16>(table, tokens, out, n_rows, hidden);
}
