// decode.cu — the decode-step attention over the KV cache, built for bandwidth: the same partial
// outputs as attention.cu's decode_attn_partial (m, l, unnormalized acc per (sample, query head,
// split)), combined by decode_attn_combine.
//
// Why a second kernel: attention.cu's tiled version (4-byte loads, three barriers per 32
// positions) took 6.5 ms of a 15.5 ms decode step for qwen2.5-14b at 10K context on one H200 (an
// eager, event-instrumented step), where reading the 2 GB of K/V should take 0.5 ms; with this
// kernel the whole step went from 10.8 to 9.8 ms at TP=2 (results/h200-cuda-engine.md). Here every lane streams 16-byte chunks of K and
// V rows, each warp keeps its own online softmax in registers (no shared memory, no barrier inside
// the loop), and the states are merged only at the end: within the warp by shuffles, across the
// block's warps through shared memory.
//
// Layout: LPP = head_dim / 8 lanes hold one K/V row (8 elements = 16 bytes each), so a warp works
// on P = 32 / LPP positions at a time, two of them in flight per lane (4 loads outstanding).
// Each lane keeps, for every query head j of the GQA group, its 8 q elements, the running max m_j,
// the running sum l_j and 8 accumulator elements — the whole group shares each K/V load.
//
// Constraints (the host falls back to attention.cu's kernel otherwise): head_dim in {8, 16, 32, 64,
// 128}; group = hq / hkv <= 8 (one instantiation per group size, decode_attn_fast_g{G}_{f16,bf16}); k/v caches and q 16-byte aligned (cudaMalloc bases,
// offsets multiples of 8 elements).
// Launch: grid = (hkv, n_splits, B), block = DQ_THREADS (256), dynamic shared memory =
//   DQ_WARPS * group * (head_dim + 2) * 4 bytes (≤ 8·8·130·4 = 33 280).
// Numerics: f32 dot products and accumulators, IEEE expf; the order of additions differs from
// attention.cu (a different partition of positions), results agree within f32 rounding.

// Helpers (to_f32, from_f32, unpack8, reductions, NEG_INF) come from common.cuh, compiled in front of this file.

#define DQ_THREADS 256
#define DQ_WARPS (DQ_THREADS / 32)


// Merges the online-softmax state (m2, l2, a2) into (m, l, a); an empty state has m = -inf, l = 0.
__device__ __forceinline__ void merge_state(float& m, float& l, float* a, float m2, float l2, const float* a2) {
    const float mn = fmaxf(m, m2);
    if (mn == NEG_INF) return;  // both empty
    const float s1 = (m == NEG_INF) ? 0.0f : expf(m - mn);
    const float s2 = (m2 == NEG_INF) ? 0.0f : expf(m2 - mn);
    l = l * s1 + l2 * s2;
#pragma unroll
    for (int i = 0; i < 8; ++i) a[i] = a[i] * s1 + a2[i] * s2;
    m = mn;
}

extern __shared__ __align__(16) float dq_smem[];

template <typename T, int G>
__device__ __forceinline__ void decode_attn_fast_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
                                                      const T* __restrict__ v_cache, const int* __restrict__ row_pos,
                                                      float* __restrict__ part_ml, float* __restrict__ part_acc,
                                                      int B, int hq, int hkv, int d, int max_len, int split_len,
                                                      float scale) {
    const int g = blockIdx.x, s = blockIdx.y, b = blockIdx.z;
    const int n_splits = gridDim.y;
    const int group = G;  // == hq / hkv (the host picks the instantiation)
    const int h0 = g * group;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int lpp = d >> 3;           // lanes per position
    const int ppw = 32 / lpp;         // positions per warp step
    const int sub = lane % lpp;       // which 8-element chunk of the row
    const int pw = lane / lpp;        // which position of the warp step

    const int kv_len = row_pos[b] + 1;
    const long long start_ll = (long long)s * split_len;
    const int start = start_ll < (long long)kv_len ? (int)start_ll : kv_len;
    const int end = (long long)start + split_len < (long long)kv_len ? start + split_len : kv_len;
    const long long ml_base = ((long long)b * hq + h0) * n_splits + s;

    if (start >= end) {
        for (int j = tid; j < group; j += DQ_THREADS) {
            part_ml[(ml_base + (long long)j * n_splits) * 2 + 0] = NEG_INF;
            part_ml[(ml_base + (long long)j * n_splits) * 2 + 1] = 0.0f;
        }
        return;
    }

    float qv[G][8];
#pragma unroll
    for (int j = 0; j < G; ++j) {
        if (j < group) {
            const uint4 raw = *reinterpret_cast<const uint4*>(q + ((long long)(h0 + j) * B + b) * d + sub * 8);
            unpack8<T>(raw, qv[j]);
#pragma unroll
            for (int i = 0; i < 8; ++i) qv[j][i] *= scale;
        }
    }
    float m[G], l[G], acc[G][8];
#pragma unroll
    for (int j = 0; j < G; ++j) {
        m[j] = NEG_INF;
        l[j] = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[j][i] = 0.0f;
    }

    const long long head_base = ((long long)b * hkv + g) * max_len;
    const T* kh = k_cache + head_base * d + sub * 8;
    const T* vh = v_cache + head_base * d + sub * 8;
    const int step = DQ_WARPS * ppw;  // positions per block step

    // One position per lane group per iteration; the loads of the next iteration are issued by
    // the compiler ahead thanks to the unroll.
#pragma unroll 2
    for (int p = start + warp * ppw + pw; p - pw < end; p += step) {
        const bool live = p < end;
        uint4 kraw = make_uint4(0, 0, 0, 0), vraw = make_uint4(0, 0, 0, 0);
        if (live) {
            kraw = *reinterpret_cast<const uint4*>(kh + (long long)p * d);
            vraw = *reinterpret_cast<const uint4*>(vh + (long long)p * d);
        }
        float kf[8], vf[8];
        unpack8<T>(kraw, kf);
        unpack8<T>(vraw, vf);
#pragma unroll
        for (int j = 0; j < G; ++j) {
            if (j < group) {
                float sc = 0.0f;
#pragma unroll
                for (int i = 0; i < 8; ++i) sc = fmaf(qv[j][i], kf[i], sc);
                // Sum over the lpp lanes of this position (all lanes of the warp take part).
                for (int off = 1; off < lpp; off <<= 1) sc += __shfl_xor_sync(0xffffffffu, sc, off);
                if (live) {
                    const float mn = fmaxf(m[j], sc);
                    const float corr = expf(m[j] - mn);  // m = -inf gives 0
                    const float pr = expf(sc - mn);
                    l[j] = fmaf(l[j], corr, pr);
#pragma unroll
                    for (int i = 0; i < 8; ++i) acc[j][i] = fmaf(acc[j][i], corr, pr * vf[i]);
                    m[j] = mn;
                }
            }
        }
    }

    // Merge the warp's position groups (lanes with the same `sub`) by shuffles.
#pragma unroll
    for (int j = 0; j < G; ++j) {
        if (j < group) {
            for (int off = lpp; off < 32; off <<= 1) {
                const float m2 = __shfl_xor_sync(0xffffffffu, m[j], off);
                const float l2 = __shfl_xor_sync(0xffffffffu, l[j], off);
                float a2[8];
#pragma unroll
                for (int i = 0; i < 8; ++i) a2[i] = __shfl_xor_sync(0xffffffffu, acc[j][i], off);
                merge_state(m[j], l[j], acc[j], m2, l2, a2);
            }
        }
    }

    // Across warps: lanes 0..lpp-1 of every warp publish their state, warp 0 merges in order.
    // Shared layout: [warp][j][0..d) acc, then [warp][j] m and l after all acc.
    float* sa = dq_smem;                                  // DQ_WARPS * group * d
    float* sml = dq_smem + DQ_WARPS * group * d;          // DQ_WARPS * group * 2
    if (pw == 0) {
#pragma unroll
        for (int j = 0; j < G; ++j) {
            if (j < group) {
#pragma unroll
                for (int i = 0; i < 8; ++i) sa[(warp * group + j) * d + sub * 8 + i] = acc[j][i];
                if (sub == 0) {
                    sml[(warp * group + j) * 2 + 0] = m[j];
                    sml[(warp * group + j) * 2 + 1] = l[j];
                }
            }
        }
    }
    __syncthreads();
    if (warp == 0 && pw == 0) {
#pragma unroll
        for (int j = 0; j < G; ++j) {
            if (j < group) {
                for (int w = 1; w < DQ_WARPS; ++w) {
                    float a2[8];
#pragma unroll
                    for (int i = 0; i < 8; ++i) a2[i] = sa[(w * group + j) * d + sub * 8 + i];
                    merge_state(m[j], l[j], acc[j], sml[(w * group + j) * 2 + 0], sml[(w * group + j) * 2 + 1], a2);
                }
                const long long at = ml_base + (long long)j * n_splits;
                if (sub == 0) {
                    part_ml[at * 2 + 0] = m[j];
                    part_ml[at * 2 + 1] = l[j];
                }
#pragma unroll
                for (int i = 0; i < 8; ++i) part_acc[at * d + sub * 8 + i] = acc[j][i];
            }
        }
    }
}

// One instantiation per GQA group size: registers hold exactly G heads' q and accumulators.
// Up to G = 5 two blocks fit an SM in 128 registers per thread; above, one block per SM so the
// state stays in registers (measured with ptxas -v: G = 6..8 spill at 128).
#define DQ_KERNELS(G, MINB)                                                                                        \
    extern "C" __global__ void __launch_bounds__(DQ_THREADS, MINB) decode_attn_fast_g##G##_f16(                \
        const __half* q, const __half* k_cache, const __half* v_cache, const int* row_pos, float* part_ml,      \
        float* part_acc, int B, int hq, int hkv, int head_dim, int max_len, int split_len, float scale) {       \
        decode_attn_fast_impl<__half, G>(q, k_cache, v_cache, row_pos, part_ml, part_acc, B, hq, hkv, head_dim, \
                                         max_len, split_len, scale);                                           \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(DQ_THREADS, MINB) decode_attn_fast_g##G##_bf16(               \
        const __nv_bfloat16* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, const int* row_pos, \
        float* part_ml, float* part_acc, int B, int hq, int hkv, int head_dim, int max_len, int split_len,      \
        float scale) {                                                                                         \
        decode_attn_fast_impl<__nv_bfloat16, G>(q, k_cache, v_cache, row_pos, part_ml, part_acc, B, hq, hkv,    \
                                                head_dim, max_len, split_len, scale);                          \
    }

DQ_KERNELS(1, 2)
DQ_KERNELS(2, 2)
DQ_KERNELS(3, 2)
DQ_KERNELS(4, 2)
DQ_KERNELS(5, 2)
DQ_KERNELS(6, 1)
DQ_KERNELS(7, 1)
DQ_KERNELS(8, 1)

// ------------------------------------------------------------------------------------------------
// decode_attn_merge: combines the splits of decode_attn_fast (or attention.cu's decode_attn_partial)
// into attn (B, hq*d) row-major, for each (sample b, query head h):
//   M = max_s m_s over non-empty splits; w_s = exp(m_s − M); L = Σ_s l_s·w_s;
//   out[b, h*d + i] = (Σ_s acc_s,i·w_s) / L.
// Non-empty splits form a prefix (s < live). Eight warps take splits round-robin, each lane a
// float4 slice of head_dim, so a block keeps 8 × 32 16-byte loads in flight per round instead of
// walking the splits one at a time; the warps' partial sums meet in shared memory.
// Launch: grid = (hq, B), block = 256 (MG_THREADS), shared = 0 (static 8 KiB + 128 B).
// Constraints: head_dim % 4 == 0, head_dim <= 256; part_acc 16-byte aligned.

#define MG_THREADS 256
#define MG_WARPS (MG_THREADS / 32)

template <typename T>
__device__ __forceinline__ void decode_attn_merge_impl(const float* __restrict__ part_ml, const float* __restrict__ part_acc,
                                                       T* __restrict__ out, int B, int hq, int d, int n_splits) {
    __shared__ float red[3][MG_WARPS];
    __shared__ __align__(16) float part[MG_WARPS][256];
    const int h = blockIdx.x, b = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long base = ((long long)b * hq + h) * n_splits;
    const float* ml = part_ml + base * 2;
    const float* acc = part_acc + base * d;

    // M and the number of non-empty splits.
    float mx = NEG_INF, last = -1.0f;
    for (int s = tid; s < n_splits; s += MG_THREADS) {
        if (ml[2 * s + 1] > 0.0f) {
            mx = fmaxf(mx, ml[2 * s]);
            last = fmaxf(last, (float)s);
        }
    }
    mx = warp_max(mx);
    last = warp_max(last);
    if (lane == 0) {
        red[0][warp] = mx;
        red[1][warp] = last;
    }
    __syncthreads();
    float M = NEG_INF, lastall = -1.0f;
#pragma unroll
    for (int w = 0; w < MG_WARPS; ++w) {
        M = fmaxf(M, red[0][w]);
        lastall = fmaxf(lastall, red[1][w]);
    }
    const int live = (int)lastall + 1;

    // Each warp: its splits, lanes over float4 slices of d (at most 2 slices per lane: d <= 256).
    float4 a0 = make_float4(0.f, 0.f, 0.f, 0.f), a1 = a0;
    float lsum = 0.0f;
    const int c0 = lane * 4, c1 = 128 + lane * 4;
    for (int s = warp; s < live; s += MG_WARPS) {
        const float w = expf(ml[2 * s] - M);
        lsum = fmaf(ml[2 * s + 1], w, lsum);
        const float* as = acc + (long long)s * d;
        if (c0 < d) {
            const float4 v = *reinterpret_cast<const float4*>(as + c0);
            a0.x = fmaf(v.x, w, a0.x); a0.y = fmaf(v.y, w, a0.y); a0.z = fmaf(v.z, w, a0.z); a0.w = fmaf(v.w, w, a0.w);
        }
        if (c1 < d) {
            const float4 v = *reinterpret_cast<const float4*>(as + c1);
            a1.x = fmaf(v.x, w, a1.x); a1.y = fmaf(v.y, w, a1.y); a1.z = fmaf(v.z, w, a1.z); a1.w = fmaf(v.w, w, a1.w);
        }
    }
    if (c0 < d) *reinterpret_cast<float4*>(&part[warp][c0]) = a0;
    if (c1 < d) *reinterpret_cast<float4*>(&part[warp][c1]) = a1;
    if (lane == 0) red[2][warp] = lsum;  // every lane of a warp computed the same lsum
    __syncthreads();
    float L = 0.0f;
#pragma unroll
    for (int w = 0; w < MG_WARPS; ++w) L += red[2][w];
    T* o = out + (long long)b * hq * d + (long long)h * d;
    for (int i = tid; i < d; i += MG_THREADS) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < MG_WARPS; ++w) sum += part[w][i];
        o[i] = from_f32<T>(L > 0.0f ? sum / L : 0.0f);
    }
}

extern "C" __global__ void __launch_bounds__(MG_THREADS) decode_attn_merge_f16(const float* part_ml, const float* part_acc,
                                                                               __half* out, int B, int hq, int head_dim, int n_splits) {
    decode_attn_merge_impl<__half>(part_ml, part_acc, out, B, hq, head_dim, n_splits);
}
extern "C" __global__ void __launch_bounds__(MG_THREADS) decode_attn_merge_bf16(const float* part_ml, const float* part_acc,
                                                                                __nv_bfloat16* out, int B, int hq, int head_dim, int n_splits) {
    decode_attn_merge_impl<__nv_bfloat16>(part_ml, part_acc, out, B, hq, head_dim, n_splits);
}
