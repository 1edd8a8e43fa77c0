//! rope.cu — q/k/v bias add + rotary position embedding, scattering q into a head-major buffer and
//! k/v into the KV cache.
//
// RoPE is the Hugging Face / Qwen2 "rotate_half" (non-interleaved) form, with the same numerics as
// the cpu engine (ops.rs rope_inv_freq / rope_cos_sin / apply_rope):
//   inv_freq_i = theta^(-(2i)/d) in double, angle = pos * inv_freq_i in double (angles reach ~1e5
//   radians where f32 would lose the phase), cos/sin in double then rounded to f32;
//   out[i] = x1*c - x2*s, out[i+half] = x2*c + x1*s with each product and sum rounded separately
//   (explicit _rn intrinsics: no FMA contraction, like the CPU).

// Helpers (to_f32, from_f32, unpack8, reductions, NEG_INF) come from common.cuh, compiled in front of this file.


// Largest supported head_dim (the cos/sin tables below hold head_dim/2 entries each).
#define ROPE_MAX_HEAD_DIM 256

// qkv_rope: for row r (token) and head hh of the fused projection:
//   qkv:  (n_rows, (hq + 2*hkv) * d) f32 row-major; columns [0, hq*d) = q heads, then hkv k heads,
//         then hkv v heads. bias: ((hq + 2*hkv) * d) f32, added first.
//   q heads  (hh < hq):            RoPE, q_out[((long long)hh * n_rows + r) * d + i]   (hq, n_rows, d)
//   k heads  (g = hh - hq):        RoPE, k_cache[((slot * hkv + g) * max_len + pos) * d + i]
//   v heads  (g = hh - hq - hkv):  copy, v_cache[ same index ]
//   slot = row_slot[r], pos = row_pos[r] (0 <= pos < max_len, not checked).
//
// Launch: grid = (n_rows, G, 1) with any 1 <= G <= hq + 2*hkv; block y handles heads
//   hh = blockIdx.y, blockIdx.y + G, ...  G = hq + 2*hkv (one block per (row, head), block = 64:
//   decode's few rows) or G = 1 (one block per row, block = 256: a prefill computes the double-
//   precision cos/sin table once per row instead of once per head).
//   Any block size that is a multiple of 32 up to 1024 works; shared = 0 (static 1 KiB table).
// Constraints: head_dim even, 2 <= head_dim <= 256. theta is passed as f32: it must be exactly
// representable (1e4, 1e6, ... are) to match the CPU's f64 theta.
template <typename T>
__device__ __forceinline__ void qkv_rope_impl(const float* __restrict__ qkv, const float* __restrict__ bias,
                                              T* __restrict__ q_out, T* __restrict__ k_cache, T* __restrict__ v_cache,
                                              const int* __restrict__ row_slot, const int* __restrict__ row_pos,
                                              int n_rows, int hq, int hkv, int d, int max_len, float rope_theta) {
    __shared__ float cos_t[ROPE_MAX_HEAD_DIM / 2];
    __shared__ float sin_t[ROPE_MAX_HEAD_DIM / 2];
    const int r = blockIdx.x;
    if (r >= n_rows) return;  // block-uniform
    const int half = d >> 1;
    const int n_heads = hq + 2 * hkv;
    const int pos = row_pos[r];
    const int slot = row_slot[r];

    // Only blocks that rotate something need the table (block-uniform test: blockIdx.y < hq + hkv
    // means this block's first head is a q or k head).
    const bool needs_table = (int)blockIdx.y < hq + hkv;
    if (needs_table) {
        for (int i = threadIdx.x; i < half; i += blockDim.x) {
            const double inv_freq = pow((double)rope_theta, -(double)(2 * i) / (double)d);
            const double angle = (double)pos * inv_freq;
            cos_t[i] = (float)cos(angle);
            sin_t[i] = (float)sin(angle);
        }
    }
    __syncthreads();

    // The block's heads hh = blockIdx.y + j * gridDim.y, j < heads_here, as `half` units each,
    // flattened over the block's threads (with one block per row and many heads, every thread
    // has work; with one head per block it is the plain loop over i). Unit i of a head writes its
    // elements i and i + half.
    const float* xrow = qkv + (long long)r * n_heads * d;
    const int heads_here = (n_heads - (int)blockIdx.y + (int)gridDim.y - 1) / (int)gridDim.y;
    for (int u = threadIdx.x; u < heads_here * half; u += blockDim.x) {
        const int hh = blockIdx.y + (u / half) * gridDim.y;
        const int i = u % half;
        const float* x = xrow + (long long)hh * d;
        const float* bh = bias + (long long)hh * d;
        if (hh < hq + hkv) {
            T* dst;
            if (hh < hq) {
                dst = q_out + ((long long)hh * n_rows + r) * d;
            } else {
                const int g = hh - hq;
                dst = k_cache + (((long long)slot * hkv + g) * max_len + pos) * d;
            }
            const float x1 = __fadd_rn(x[i], bh[i]);
            const float x2 = __fadd_rn(x[i + half], bh[i + half]);
            const float c = cos_t[i], s = sin_t[i];
            dst[i] = from_f32<T>(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
            dst[i + half] = from_f32<T>(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
        } else {
            const int g = hh - hq - hkv;
            T* dst = v_cache + (((long long)slot * hkv + g) * max_len + pos) * d;
            dst[i] = from_f32<T>(__fadd_rn(x[i], bh[i]));
            dst[i + half] = from_f32<T>(__fadd_rn(x[i + half], bh[i + half]));
        }
    }
}

extern "C" __global__ void __launch_bounds__(1024) qkv_rope_f16(const float* qkv, const float* bias, __half* q_out,
                                                                __half* k_cache, __half* v_cache, const int* row_slot,
                                                                const int* row_pos, int n_rows, int hq, int hkv,
                                                                int head_dim, int max_len, float rope_theta) {
    pdl_wait();
    qkv_rope_impl<__half>(qkv, bias, q_out, k_cache, v_cache, row_slot, row_pos, n_rows, hq, hkv, head_dim, max_len,
                          rope_theta);
}

extern "C" __global__ void __launch_bounds__(1024) qkv_rope_bf16(const float* qkv, const float* bias, __nv_bfloat16* q_out,
                                                                 __nv_bfloat16* k_cache, __nv_bfloat16* v_cache,
                                                                 const int* row_slot, const int* row_pos, int n_rows,
                                                                 int hq, int hkv, int head_dim, int max_len,
                                                                 float rope_theta) {
    pdl_wait();
    qkv_rope_impl<__nv_bfloat16>(qkv, bias, q_out, k_cache, v_cache, row_slot, row_pos, n_rows, hq, hkv, head_dim,
                                 max_len, rope_theta);
}
