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
    int start, end;
    split_bounds(kv_len, s, split_len, start, end);
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
        float* part_acc, int B, int hq, int hkv, int head_dim, int max_len, int split_len, float scale) { pdl_wait(); \
        decode_attn_fast_impl<__half, G>(q, k_cache, v_cache, row_pos, part_ml, part_acc, B, hq, hkv, head_dim, \
                                         max_len, split_len, scale);                                           \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(DQ_THREADS, MINB) decode_attn_fast_g##G##_bf16(               \
        const __nv_bfloat16* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, const int* row_pos, \
        float* part_ml, float* part_acc, int B, int hq, int hkv, int head_dim, int max_len, int split_len,      \
        float scale) { pdl_wait();                                                                             \
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
    pdl_wait();
    decode_attn_merge_impl<__half>(part_ml, part_acc, out, B, hq, head_dim, n_splits);
}
extern "C" __global__ void __launch_bounds__(MG_THREADS) decode_attn_merge_bf16(const float* part_ml, const float* part_acc,
                                                                                __nv_bfloat16* out, int B, int hq, int head_dim, int n_splits) {
    pdl_wait();
    decode_attn_merge_impl<__nv_bfloat16>(part_ml, part_acc, out, B, hq, head_dim, n_splits);
}

// ------------------------------------------------------------------------------------------------
// decode_attn_sk: the default decode attention since session 3 — scores first, then values, each
// phase with its own thread layout, so that no phase needs a shuffle per (position, head). Same
// partial outputs (m, l, unnormalized acc per (sample, query head, split)) as decode_attn_fast,
// combined by decode_attn_merge.
//
// Why: decode_attn_fast (above) streams K and V with 16 lanes per row and reduces every score over
// those lanes by four dependent shuffles per query head: for qwen2.5-14b TP=2 at 10K context it took
// 28.4 µs per layer (CUPTI, results/h200-cupti.md) to read 20.5 MB of K/V, ~15 % of the H200's
// bandwidth — the warps were waiting on shuffle and exp latency, not on memory.
//
//   phase 0  q of the G query heads of this KV head → shared memory as f32, pre-scaled;
//   phase 1  scores: two lanes per K row (lane pair = one 32-byte sector per load instruction:
//            full sectors, 16 rows per warp instruction), each lane D/16 16-byte loads issued back
//            to back, dot products against q from shared memory (broadcast reads), one shuffle to
//            add the pair; scores → shared memory;
//   softmax  warp j (< G) takes query head j: max, exp in place, sum → (m_j, l_j);
//   phase 2  values: D/8 lanes per V row (coalesced 16-byte loads), probabilities from shared
//            memory, acc[G][8] per lane in registers; rows merged by shuffles within the warp,
//            then across the warps through shared memory (reusing phase 1's space).
//
// Constraints (the host uses decode_attn_fast otherwise): D in {64, 128}; group G <= 8;
// split_len a multiple of 4, <= SK_MAX_SPLIT; q, k and v 16-byte aligned.
// Launch: grid = (hkv, n_splits, B), block = SK_THREADS, dynamic shared memory =
//   max(G*D + G*split_len + 2*G, SK_WARPS*G*D) f32 (≤ 32 KiB: G = 8, D = 128).
// Numerics: f32 dot products, IEEE expf, f32 accumulation; results agree with decode_attn_fast
// within f32 rounding.

#define SK_THREADS 256
#define SK_WARPS (SK_THREADS / 32)
#define SK_MAX_SPLIT 512

template <typename T, int G, int D>
__device__ __forceinline__ void decode_attn_sk_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
                                                    const T* __restrict__ v_cache, const int* __restrict__ row_pos,
                                                    float* __restrict__ part_ml, float* __restrict__ part_acc, int B,
                                                    int hq, int hkv, int max_len, int split_len, float scale) {
    static_assert(G >= 1 && G <= SK_WARPS && (D == 64 || D == 128), "decode_attn_sk: group 1..8, head_dim 64 or 128");
    constexpr int CH = D / 16;  // phase 1: 16-byte chunks per lane (two lanes per row)
    constexpr int VL = D / 8;   // phase 2: lanes per V row
    constexpr int VR = 32 / VL; // phase 2: V rows per warp instruction
    const int g = blockIdx.x, s = blockIdx.y, b = blockIdx.z;
    const int n_splits = gridDim.y;
    const int h0 = g * G;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    const int kv_len = row_pos[b] + 1;
    int start, end;
    split_bounds(kv_len, s, split_len, start, end);
    const long long ml_base = ((long long)b * hq + h0) * n_splits + s;
    if (start >= end) {
        if (tid < G) {
            part_ml[(ml_base + (long long)tid * n_splits) * 2 + 0] = NEG_INF;
            part_ml[(ml_base + (long long)tid * n_splits) * 2 + 1] = 0.0f;
        }
        return;
    }
    const int n = end - start;

    float* qs = dq_smem;                // G * D
    float* sc = qs + G * D;             // G * split_len: scores, then probabilities
    float* ml = sc + G * split_len;     // G * 2: (m, l) per query head

    // Phase 0.
    for (int c = tid; c < G * (D / 8); c += SK_THREADS) {
        const int j = c / (D / 8), off = (c % (D / 8)) * 8;
        const uint4 raw = *reinterpret_cast<const uint4*>(q + ((long long)(h0 + j) * B + b) * D + off);
        float f[8];
        unpack8<T>(raw, f);
#pragma unroll
        for (int i = 0; i < 8; ++i) qs[j * D + off + i] = f[i] * scale;
    }
    __syncthreads();

    const long long head_base = ((long long)b * hkv + g) * max_len + start;
    const T* kh = k_cache + head_base * D;
    const T* vh = v_cache + head_base * D;

    // Phase 1: rows warp*16 + lane/2 (+ 16 * SK_WARPS per pass); lane parity picks the half sector.
    const int half = lane & 1;
    for (int base = warp * 16; base < n; base += 16 * SK_WARPS) {
        const int r = base + (lane >> 1);
        const bool live = r < n;
        uint4 kraw[CH];
#pragma unroll
        for (int c = 0; c < CH; ++c)
            kraw[c] = live ? *reinterpret_cast<const uint4*>(kh + (long long)r * D + (2 * c + half) * 8) : make_uint4(0, 0, 0, 0);
        float dot[G];
#pragma unroll
        for (int j = 0; j < G; ++j) dot[j] = 0.0f;
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            float kf[8];
            unpack8<T>(kraw[c], kf);
#pragma unroll
            for (int j = 0; j < G; ++j) {
                const float4 qa = *reinterpret_cast<const float4*>(qs + j * D + (2 * c + half) * 8);
                const float4 qb = *reinterpret_cast<const float4*>(qs + j * D + (2 * c + half) * 8 + 4);
                float d0 = dot[j];
                d0 = fmaf(qa.x, kf[0], d0);
                d0 = fmaf(qa.y, kf[1], d0);
                d0 = fmaf(qa.z, kf[2], d0);
                d0 = fmaf(qa.w, kf[3], d0);
                d0 = fmaf(qb.x, kf[4], d0);
                d0 = fmaf(qb.y, kf[5], d0);
                d0 = fmaf(qb.z, kf[6], d0);
                d0 = fmaf(qb.w, kf[7], d0);
                dot[j] = d0;
            }
        }
#pragma unroll
        for (int j = 0; j < G; ++j) {
            const float t = dot[j] + __shfl_xor_sync(0xffffffffu, dot[j], 1);
            if (live && half == 0) sc[j * split_len + r] = t;
        }
    }
    __syncthreads();

    // Softmax per query head.
    if (warp < G) {
        float* row = sc + warp * split_len;
        float m = NEG_INF;
        for (int i = lane; i < n; i += 32) m = fmaxf(m, row[i]);
        m = warp_max(m);
        float l = 0.0f;
        for (int i = lane; i < n; i += 32) {
            const float p = expf(row[i] - m);
            row[i] = p;
            l += p;
        }
        l = warp_sum(l);
        if (lane == 0) {
            ml[2 * warp + 0] = m;
            ml[2 * warp + 1] = l;
        }
    }
    __syncthreads();

    // Phase 2.
    const int vsub = lane % VL, vrow = lane / VL;
    float acc[G][8];
#pragma unroll
    for (int j = 0; j < G; ++j)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[j][i] = 0.0f;
#pragma unroll 4
    for (int base = warp * VR; base < n; base += VR * SK_WARPS) {
        const int r = base + vrow;
        if (r < n) {
            const uint4 raw = *reinterpret_cast<const uint4*>(vh + (long long)r * D + vsub * 8);
            float vf[8];
            unpack8<T>(raw, vf);
#pragma unroll
            for (int j = 0; j < G; ++j) {
                const float p = sc[j * split_len + r];
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[j][i] = fmaf(p, vf[i], acc[j][i]);
            }
        }
    }
#pragma unroll
    for (int off = VL; off < 32; off <<= 1)
#pragma unroll
        for (int j = 0; j < G; ++j)
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[j][i] += __shfl_xor_sync(0xffffffffu, acc[j][i], off);
    // The per-head (m, l) outlive the reuse of shared memory below: keep them in registers.
    float mj = 0.0f, lj = 0.0f;
    if (tid < G) {
        mj = ml[2 * tid + 0];
        lj = ml[2 * tid + 1];
    }
    __syncthreads();  // every warp is done with qs and sc
    float* red = dq_smem;  // SK_WARPS * G * D
    if (vrow == 0) {
#pragma unroll
        for (int j = 0; j < G; ++j)
#pragma unroll
            for (int i = 0; i < 8; ++i) red[(warp * G + j) * D + vsub * 8 + i] = acc[j][i];
    }
    __syncthreads();
    for (int e = tid; e < G * D; e += SK_THREADS) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < SK_WARPS; ++w) sum += red[w * G * D + e];
        const int j = e / D, i = e % D;
        part_acc[(ml_base + (long long)j * n_splits) * D + i] = sum;
    }
    if (tid < G) {
        part_ml[(ml_base + (long long)tid * n_splits) * 2 + 0] = mj;
        part_ml[(ml_base + (long long)tid * n_splits) * 2 + 1] = lj;
    }
}

// One instantiation per (group size, head_dim, dtype): decode_attn_sk_g{G}_d{D}_{f16,bf16}. The
// parameters are decode_attn_fast's (one launch site); head_dim is D.
#define SK_KERNEL(G, D)                                                                                          \
    extern "C" __global__ void __launch_bounds__(SK_THREADS, 2) decode_attn_sk_g##G##_d##D##_f16(              \
        const __half* q, const __half* k_cache, const __half* v_cache, const int* row_pos, float* part_ml,      \
        float* part_acc, int B, int hq, int hkv, int head_dim, int max_len, int split_len, float scale) { pdl_wait(); \
        decode_attn_sk_impl<__half, G, D>(q, k_cache, v_cache, row_pos, part_ml, part_acc, B, hq, hkv, max_len, \
                                          split_len, scale);                                                   \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(SK_THREADS, 2) decode_attn_sk_g##G##_d##D##_bf16(             \
        const __nv_bfloat16* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, const int* row_pos, \
        float* part_ml, float* part_acc, int B, int hq, int hkv, int head_dim, int max_len, int split_len,      \
        float scale) { pdl_wait();                                                                             \
        decode_attn_sk_impl<__nv_bfloat16, G, D>(q, k_cache, v_cache, row_pos, part_ml, part_acc, B, hq, hkv,   \
                                                 max_len, split_len, scale);                                   \
    }
#define SK_KERNELS(G) SK_KERNEL(G, 64) SK_KERNEL(G, 128)
SK_KERNELS(1)
SK_KERNELS(2)
SK_KERNELS(3)
SK_KERNELS(4)
SK_KERNELS(5)
SK_KERNELS(6)
SK_KERNELS(7)
SK_KERNELS(8)

// ------------------------------------------------------------------------------------------------
// decode_attn_pipe: the default decode attention since session 5 — decode_attn_sk's arithmetic
// (scores first, then values) fed by an asynchronous copy pipeline, with the split merge done by
// the last block of each (sample, kv head).
//
// Why: decode_attn_sk walks q load → K rows → softmax → V rows → merge, each a DRAM round trip
// with little in flight, and both blocks of an SM sit in the same phase: 14.8 µs per layer for
// 20.5 MB of K/V (qwen2.5-14b TP=2, 10K), ~1.4 TB/s. Here a block walks its split in tiles of
// PT_TILE rows; the K and V rows of the next tile are copied into shared memory with cp.async
// (16-byte chunks, straight from L2 to shared memory, no registers) while the current tile is
// computed, so every SM keeps 32 KiB per block in flight for the whole kernel.
//
//   per tile: scores (4 lanes per K row, D/32 chunks each, q from shared memory as f32, 2 shuffles
//             to add the quarters) → shared memory; online softmax per query head (warp j takes
//             head j: tile max, rescale of the running (m, l), probabilities in place); values
//             (D/8 lanes per V row, accumulators acc[G][8] per lane rescaled by the head's factor).
//   shared memory: chunk ch of row r sits at r*(D/8) + (ch ^ 4*(r & 1)) (16-byte units): the
//             score reads (8 lanes = 2 rows × 4 quarters) and the value reads (8 lanes = 8
//             chunks of one row) hit 8 different 16-byte bank groups.
//   merge:    when `counters` is not null, every block adds 1 to counters[b*hkv + g] after its
//             partial results are visible (__threadfence); the block that brings it to n_splits
//             resets it to 0 (graph replays start from 0) and combines the n_splits partials of its
//             G query heads into out (B, hq*D) like decode_attn_merge. With null, the host
//             launches decode_attn_merge.
//
// Constraints (the host uses decode_attn_sk otherwise): D in {64, 128}; G <= 8; q, k, v 16-byte
// aligned; sm_80 or newer for cp.async (older GPUs copy through registers, same results).
// Launch: grid = (hkv, n_splits, B), block = PT_THREADS, dynamic shared memory =
//   PT_STAGES*2*PT_TILE*D*sizeof(T) + (G*D + G*PT_TILE + G) * 4 bytes (D = 128, G = 8: 70 688).
// Numerics: f32 dot products, IEEE expf, f32 accumulation; the same results as decode_attn_sk
// within f32 rounding (a different order of additions).

#define PT_THREADS 256
#define PT_WARPS (PT_THREADS / 32)
#define PT_TILE 64
#define PT_STAGES 2

template <typename T, int D>
__device__ __forceinline__ void merge_in_last_block(const float* __restrict__ part_ml,
                                                    const float* __restrict__ part_acc, int* __restrict__ counters,
                                                    T* __restrict__ out, int b, int g, int hkv, int hq, int h0,
                                                    int group, int n_splits) {
    __shared__ int is_last;
    const int tid = threadIdx.x;
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        int* ctr = counters + (long long)b * hkv + g;
        const int done = atomicAdd(ctr, 1);
        is_last = done == n_splits - 1;
        if (is_last) *ctr = 0;  // every block of this launch has counted: ready for the next one
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    const long long head0 = ((long long)b * hq + h0) * n_splits;
    for (int e = tid; e < group * D; e += blockDim.x) {
        const int j = e / D, i = e % D;
        const float* ml = part_ml + (head0 + (long long)j * n_splits) * 2;
        const float* ac = part_acc + (head0 + (long long)j * n_splits) * D + i;
        float M = NEG_INF;
        for (int t = 0; t < n_splits; ++t)
            if (__ldcg(ml + 2 * t + 1) > 0.0f) M = fmaxf(M, __ldcg(ml + 2 * t));
        float L = 0.0f, sum = 0.0f;
#pragma unroll 4
        for (int t = 0; t < n_splits; ++t) {
            const float l = __ldcg(ml + 2 * t + 1);
            if (l > 0.0f) {
                const float w = expf(__ldcg(ml + 2 * t) - M);
                L = fmaf(l, w, L);
                sum = fmaf(__ldcg(ac + (long long)t * D), w, sum);
            }
        }
        out[(long long)b * hq * D + (long long)(h0 + j) * D + i] = from_f32<T>(L > 0.0f ? sum / L : 0.0f);
    }
}

template <typename T, int G, int D>
__device__ __forceinline__ void decode_attn_pipe_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
                                                      const T* __restrict__ v_cache, const int* __restrict__ row_pos,
                                                      float* __restrict__ part_ml, float* __restrict__ part_acc,
                                                      int* __restrict__ counters, T* __restrict__ out, int B, int hq,
                                                      int hkv, int max_len, int split_len, float scale) {
    static_assert(G >= 1 && G <= PT_WARPS && (D == 64 || D == 128), "decode_attn_pipe: group 1..8, head_dim 64 or 128");
    constexpr int CPR = D / 8;           // 16-byte chunks per row
    constexpr int SQ = CPR / 4;          // score phase: chunks per lane (4 lanes per row)
    constexpr int VL = D / 8;            // value phase: lanes per V row
    constexpr int VR = 32 / VL;          // value phase: V rows per warp instruction
    constexpr int TILE_CHUNKS = PT_TILE * CPR;
    static_assert(PT_TILE == PT_WARPS * 8, "score phase: 8 rows per warp");
    const int g = blockIdx.x, s = blockIdx.y, b = blockIdx.z;
    const int n_splits = gridDim.y;
    const int h0 = g * G;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    const int kv_len = row_pos[b] + 1;
    int start, end;
    split_bounds(kv_len, s, split_len, start, end);
    const long long ml_base = ((long long)b * hq + h0) * n_splits + s;
    const int n = end - start;

    uint4* kv = reinterpret_cast<uint4*>(dq_smem);                        // PT_STAGES × (K, V) × TILE_CHUNKS
    float* qs = dq_smem + PT_STAGES * 2 * TILE_CHUNKS * 4;               // G × D
    float* sc = qs + G * D;                                              // G × PT_TILE
    float* corr_s = sc + G * PT_TILE;                                    // G

    float m_run = NEG_INF, l_run = 0.0f;  // warp j < G: head j's running max and sum
    float acc[G][8];
#pragma unroll
    for (int j = 0; j < G; ++j)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[j][i] = 0.0f;
    const int vsub = lane % VL, vrow = lane / VL;

    if (n > 0) {
        const long long head_base = ((long long)b * hkv + g) * max_len + start;
        const T* kh = k_cache + head_base * D;
        const T* vh = v_cache + head_base * D;
        const int n_tiles = (n + PT_TILE - 1) / PT_TILE;
        auto load_tile = [&](int t) {
            uint4* ks = kv + (t % PT_STAGES) * 2 * TILE_CHUNKS;
            uint4* vs = ks + TILE_CHUNKS;
            const int r0 = t * PT_TILE;
            static_assert(TILE_CHUNKS % PT_THREADS == 0, "whole copy rounds");
#pragma unroll
            for (int k = 0; k < TILE_CHUNKS / PT_THREADS; ++k) {
                const int c = tid + k * PT_THREADS;
                const int r = c / CPR, ch = c % CPR;
                const bool live = r0 + r < n;
                const long long off = (long long)(live ? r0 + r : 0) * D + ch * 8;
                const int at = r * CPR + (ch ^ ((r & 1) << 2));
                fa_cp_async16(ks + at, kh + off, live);
                fa_cp_async16(vs + at, vh + off, live);
            }
        };
        // Prologue: the first PT_STAGES - 1 tiles in flight, then q (its loads overlap them).
#pragma unroll
        for (int t = 0; t < PT_STAGES - 1; ++t) {
            if (t < n_tiles) load_tile(t);
            fa_commit();
        }
        for (int c = tid; c < G * CPR; c += PT_THREADS) {
            const int j = c / CPR, off = (c % CPR) * 8;
            const uint4 raw = *reinterpret_cast<const uint4*>(q + ((long long)(h0 + j) * B + b) * D + off);
            float f[8];
            unpack8<T>(raw, f);
#pragma unroll
            for (int i = 0; i < 8; ++i) qs[j * D + off + i] = f[i] * scale;
        }

        for (int t = 0; t < n_tiles; ++t) {
            if (t + PT_STAGES - 1 < n_tiles) load_tile(t + PT_STAGES - 1);
            fa_commit();
            fa_wait<PT_STAGES - 1>();
            __syncthreads();
            const uint4* ks = kv + (t % PT_STAGES) * 2 * TILE_CHUNKS;
            const uint4* vs = ks + TILE_CHUNKS;
            const int nt = min(PT_TILE, n - t * PT_TILE);

            // Scores: row warp*8 + lane/4, quarter lane%4 takes chunks c*4 + quarter.
            {
                const int r = warp * 8 + (lane >> 2), qd = lane & 3;
                float dot[G];
#pragma unroll
                for (int j = 0; j < G; ++j) dot[j] = 0.0f;
#pragma unroll
                for (int c = 0; c < SQ; ++c) {
                    const int ch = c * 4 + qd;
                    float kf[8];
                    unpack8<T>(ks[r * CPR + (ch ^ ((r & 1) << 2))], kf);
#pragma unroll
                    for (int j = 0; j < G; ++j) {
                        const float4 qa = *reinterpret_cast<const float4*>(qs + j * D + ch * 8);
                        const float4 qb = *reinterpret_cast<const float4*>(qs + j * D + ch * 8 + 4);
                        float d0 = dot[j];
                        d0 = fmaf(qa.x, kf[0], d0);
                        d0 = fmaf(qa.y, kf[1], d0);
                        d0 = fmaf(qa.z, kf[2], d0);
                        d0 = fmaf(qa.w, kf[3], d0);
                        d0 = fmaf(qb.x, kf[4], d0);
                        d0 = fmaf(qb.y, kf[5], d0);
                        d0 = fmaf(qb.z, kf[6], d0);
                        d0 = fmaf(qb.w, kf[7], d0);
                        dot[j] = d0;
                    }
                }
#pragma unroll
                for (int j = 0; j < G; ++j) {
                    float d0 = dot[j];
                    d0 += __shfl_xor_sync(0xffffffffu, d0, 1);
                    d0 += __shfl_xor_sync(0xffffffffu, d0, 2);
                    if (qd == 0) sc[j * PT_TILE + r] = r < nt ? d0 : NEG_INF;
                }
            }
            __syncthreads();

            // Online softmax: warp j, head j; two scores per lane.
            if (warp < G) {
                float* row = sc + warp * PT_TILE;
                const float s0 = row[lane], s1 = row[lane + 32];
                const float m_new = fmaxf(m_run, warp_max(fmaxf(s0, s1)));  // finite: the tile has a live row
                const float cf = expf(m_run - m_new);                          // m_run = -inf gives 0
                const float p0 = expf(s0 - m_new), p1 = expf(s1 - m_new);    // masked rows give 0
                row[lane] = p0;
                row[lane + 32] = p1;
                l_run = l_run * cf + warp_sum(p0 + p1);
                m_run = m_new;
                if (lane == 0) corr_s[warp] = cf;
            }
            __syncthreads();

            // Values: rows warp*VR + vrow (+ VR*PT_WARPS per pass), lane chunk vsub.
#pragma unroll
            for (int j = 0; j < G; ++j) {
                const float cf = corr_s[j];
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[j][i] *= cf;
            }
#pragma unroll
            for (int k = 0; k < PT_TILE / (VR * PT_WARPS); ++k) {
                const int r = k * VR * PT_WARPS + warp * VR + vrow;
                float vf[8];
                unpack8<T>(vs[r * CPR + (vsub ^ ((r & 1) << 2))], vf);  // zero-filled past the end
#pragma unroll
                for (int j = 0; j < G; ++j) {
                    const float p = sc[j * PT_TILE + r];
#pragma unroll
                    for (int i = 0; i < 8; ++i) acc[j][i] = fmaf(p, vf[i], acc[j][i]);
                }
            }
            __syncthreads();  // the stage is refilled by the next iteration's copy
        }
    }

    // The block's partial result: acc summed over the lanes of a chunk, then over the warps.
#pragma unroll
    for (int off = VL; off < 32; off <<= 1)
#pragma unroll
        for (int j = 0; j < G; ++j)
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[j][i] += __shfl_xor_sync(0xffffffffu, acc[j][i], off);
    float* red = dq_smem;  // PT_WARPS × G × D f32, within the copy stages (all copies waited for)
    if (vrow == 0) {
#pragma unroll
        for (int j = 0; j < G; ++j)
#pragma unroll
            for (int i = 0; i < 8; ++i) red[(warp * G + j) * D + vsub * 8 + i] = acc[j][i];
    }
    __syncthreads();
    for (int e = tid; e < G * D; e += PT_THREADS) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < PT_WARPS; ++w) sum += red[w * G * D + e];
        const int j = e / D, i = e % D;
        part_acc[(ml_base + (long long)j * n_splits) * D + i] = sum;
    }
    if (warp < G && lane == 0) {
        part_ml[(ml_base + (long long)warp * n_splits) * 2 + 0] = m_run;
        part_ml[(ml_base + (long long)warp * n_splits) * 2 + 1] = l_run;
    }
    if (counters == nullptr) return;

    merge_in_last_block<T, D>(part_ml, part_acc, counters, out, b, g, hkv, hq, h0, G, n_splits);
}

// decode_attn_pipe_g{G}_d{D}_{f16,bf16}: decode_attn_sk's parameters plus counters and out.
#define PT_KERNEL(G, D)                                                                                          \
    extern "C" __global__ void __launch_bounds__(PT_THREADS, 2) decode_attn_pipe_g##G##_d##D##_f16(            \
        const __half* q, const __half* k_cache, const __half* v_cache, const int* row_pos, float* part_ml,      \
        float* part_acc, int* counters, __half* out, int B, int hq, int hkv, int head_dim, int max_len,         \
        int split_len, float scale) { pdl_wait();                                                              \
        decode_attn_pipe_impl<__half, G, D>(q, k_cache, v_cache, row_pos, part_ml, part_acc, counters, out, B,  \
                                            hq, hkv, max_len, split_len, scale);                               \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(PT_THREADS, 2) decode_attn_pipe_g##G##_d##D##_bf16(           \
        const __nv_bfloat16* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, const int* row_pos, \
        float* part_ml, float* part_acc, int* counters, __nv_bfloat16* out, int B, int hq, int hkv,            \
        int head_dim, int max_len, int split_len, float scale) { pdl_wait();                                   \
        decode_attn_pipe_impl<__nv_bfloat16, G, D>(q, k_cache, v_cache, row_pos, part_ml, part_acc, counters,   \
                                                   out, B, hq, hkv, max_len, split_len, scale);                \
    }
#define PT_KERNELS(G) PT_KERNEL(G, 64) PT_KERNEL(G, 128)
PT_KERNELS(1)
PT_KERNELS(2)
PT_KERNELS(3)
PT_KERNELS(4)
PT_KERNELS(5)
PT_KERNELS(6)
PT_KERNELS(7)
PT_KERNELS(8)

// ------------------------------------------------------------------------------------------------
// decode_attn_mma: decode attention on tensor cores (TPPROF_CUDA_ATTN=mma) — decode_attn_pipe's
// asynchronous copies, with the scores and the values computed by mma.sync m16n8k16 as prefill.cu
// does, the G query heads of a KV head standing in for prefill's 16 query rows.
//
// Why: decode_attn_sk and decode_attn_pipe do the dot products in f32 FMAs with q (and the
// probabilities) re-read from shared memory for every K/V chunk: at 10K contexts both are bound by
// that instruction stream, not by memory (1.5 TB/s of the H200's 4.8, results/h200-cuda-engine.md).
// On tensor cores a 16-position step of one warp is 8 + 8 ldmatrix.x4 and 16 + 16 mma for all G
// heads at once; q and the probabilities never leave registers.
//
// Per block: MM_WARPS warps; the split is walked in tiles of MM_TILE = 16 * MM_WARPS positions, K
// and V tiles copied into MM_STAGES shared stages with cp.async (16-byte chunks XOR-swizzled by
// (row & 7), prefill.cu's fa_sw), one __syncthreads per tile: wait for tile t, barrier, issue tile
// t + MM_STAGES − 1 into the stage tile t − 1 used, compute tile t. Warp w takes positions
// w·16 .. w·16 + 15 of every tile and keeps its own online softmax (base 2, as prefill.cu).
//   A (16 × 16): q of query head h0 + r in row r (r = lane / 4 < G; rows G..7 zero q, whose finite
//                results are never read; rows 8..15 zero registers), loaded once
//                from global memory into registers (2 of the 4 registers per k-step are zero);
//   S = q · Kᵀ:  D/16 k-steps × 2 n-tiles (8 positions each), K rows via ldmatrix (the col-major
//                B of q · Kᵀ as stored);
//   softmax:     thread (r, t) holds positions 2t, 2t+1, 8+2t, 8+2t+1 of head r; the quad's max
//                by two shuffles; positions past the split end are −inf;
//   O += P · V:  the two score fragments are P's A fragment (rounded to T), V via ldmatrix.trans,
//                D/8 n-tiles of 8 columns; O rows 8..15 stay zero.
// At the end the warps' states meet in shared memory (the stages, every copy waited for): per
// head, the block max M, each warp's O scaled by 2^(m_w − M), summed → part_acc (unnormalized),
// part_ml = (M · ln 2, Σ l_w 2^(m_w − M)) — decode_attn_merge's natural-log convention. With
// `counters` the last block per (sample, KV head) merges (merge_in_last_block), else the host
// launches decode_attn_merge.
//
// Constraints (the host uses decode_attn_sk / _pipe otherwise): D in {64, 128}; group = hq / hkv
// <= 8; sm_80 or newer; q, k, v 16-byte aligned.
// Launch: grid = (hkv, n_splits, B), block = MM_THREADS, dynamic shared memory =
//   MM_STAGES * 2 * MM_TILE * D * sizeof(T) bytes (D = 128: 96 KiB, two blocks per SM).
// Numerics: fp16/bf16 products with f32 accumulation (as prefill.cu, cuBLAS, FlashAttention),
// probabilities rounded to T before P · V, ex2.approx; within the tolerance `tpprof verify` holds
// every kernel to.

#define MM_WARPS 4
#define MM_THREADS (MM_WARPS * 32)
#define MM_TILE (16 * MM_WARPS)
#define MM_STAGES 3

template <typename T, int D>
__device__ __forceinline__ void decode_attn_mma_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
                                                     const T* __restrict__ v_cache, const int* __restrict__ row_pos,
                                                     float* __restrict__ part_ml, float* __restrict__ part_acc,
                                                     int* __restrict__ counters, T* __restrict__ out, int B, int hq,
                                                     int hkv, int max_len, int split_len, float scale) {
#if __CUDA_ARCH__ >= 800
    static_assert(D == 64 || D == 128, "decode_attn_mma: head_dim 64 or 128");
    constexpr int CPR = D / 8;   // 16-byte chunks per row
    constexpr int KS = D / 16;   // k-steps of q · Kᵀ
    constexpr int DT = D / 8;    // 8-column n-tiles of O
    constexpr int RPR = MM_THREADS / CPR;  // rows per copy round (a multiple of 8: the swizzle repeats)
    static_assert(RPR % 8 == 0 && MM_TILE % RPR == 0, "decode_attn_mma: whole copy rounds");
    static_assert(MM_WARPS * 8 * (D + 2) * 4 <= MM_STAGES * 2 * MM_TILE * D * 2, "the merge fits the stages");
    const int g = blockIdx.x, s = blockIdx.y, b = blockIdx.z;
    const int n_splits = gridDim.y;
    const int group = hq / hkv;  // <= 8 (host-checked)
    const int h0 = g * group;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int hr = lane >> 2, tq = lane & 3;  // the thread's query head (A / C row) and quad index

    const int kv_len = row_pos[b] + 1;
    int start, end;
    split_bounds(kv_len, s, split_len, start, end);
    const long long ml_base = ((long long)b * hq + h0) * n_splits + s;
    const int n = end - start;

    T* ks = reinterpret_cast<T*>(dq_smem);  // MM_STAGES × MM_TILE × D
    T* vs = ks + MM_STAGES * MM_TILE * D;   // MM_STAGES × MM_TILE × D

    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m_run = NEG_INF, l_run = 0.0f;  // head hr's, over this warp's positions (l: this thread's share)

    if (n > 0) {
        const long long head_base = ((long long)b * hkv + g) * max_len + start;
        const int c_row = tid / CPR, c_ch = tid % CPR;
        const int c_sw = fa_sw<D>(c_row, c_ch);  // + i · RPR · D in round i
        const T* kc = k_cache + head_base * D + c_ch * 8;
        const T* vc = v_cache + head_base * D + c_ch * 8;
        const int n_tiles = (n + MM_TILE - 1) / MM_TILE;
        auto load_tile = [&](int t) {
            const int st = t % MM_STAGES;
            T* kd = ks + st * MM_TILE * D + c_sw;
            T* vd = vs + st * MM_TILE * D + c_sw;
#pragma unroll
            for (int i = 0; i < MM_TILE / RPR; ++i) {
                const int r = t * MM_TILE + c_row + i * RPR;
                const bool live = r < n;
                const long long off = live ? (long long)r * D : 0;
                fa_cp_async16(kd + i * RPR * D, kc + off, live);
                fa_cp_async16(vd + i * RPR * D, vc + off, live);
            }
        };
#pragma unroll
        for (int t = 0; t < MM_STAGES - 1; ++t) {
            if (t < n_tiles) load_tile(t);
            fa_commit();
        }
        // q as A fragments (its loads overlap the copies above): row hr, columns 2tq, 2tq+1 and 8+2tq, 8+2tq+1
        // of each k-step; rows hr + 8 (registers 1 and 3) are zero.
        unsigned qa[KS][2];
        {
            const bool live = hr < group;
            const T* qp = q + ((long long)(h0 + (live ? hr : 0)) * B + b) * D + 2 * tq;
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
                qa[kk][0] = live ? *reinterpret_cast<const unsigned*>(qp + kk * 16) : 0u;
                qa[kk][1] = live ? *reinterpret_cast<const unsigned*>(qp + kk * 16 + 8) : 0u;
            }
        }
        const float sl2 = scale * 1.4426950408889634f;  // scale · log2(e): softmax in base 2

        for (int t = 0; t < n_tiles; ++t) {
            fa_wait<MM_STAGES - 2>();  // tile t's copies (this thread's) have landed
            __syncthreads();           // ... every thread's, and every warp is done with tile t - 1
            if (t + MM_STAGES - 1 < n_tiles) load_tile(t + MM_STAGES - 1);
            fa_commit();  // (possibly empty) group
            const int p0 = t * MM_TILE + warp * 16;  // the warp's first position in the split
            if (p0 < n) {                            // warp-uniform
                const T* kb = ks + (t % MM_STAGES) * MM_TILE * D;
                const T* vb = vs + (t % MM_STAGES) * MM_TILE * D;
                float sc[2][4];
#pragma unroll
                for (int i = 0; i < 2; ++i) sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < KS; ++kk) {
                    unsigned bk[4];
                    const int r = warp * 16 + (lane & 7) + (lane >> 4) * 8;
                    fa_ldsm_x4(bk, kb + fa_sw<D>(r, kk * 2 + ((lane >> 3) & 1)));
                    const unsigned a[4] = {qa[kk][0], 0u, qa[kk][1], 0u};
                    fa_mma<T>(sc[0], a, bk[0], bk[1]);
                    fa_mma<T>(sc[1], a, bk[2], bk[3]);
                }
                // Row hr: positions p0 + nt·8 + 2tq + e (nt, e in {0, 1}); elements 2, 3 are row hr + 8.
                float x[2][2];
                float mx = NEG_INF;
#pragma unroll
                for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int pos = p0 + nt * 8 + 2 * tq + e;
                        x[nt][e] = pos < n ? sc[nt][e] * sl2 : NEG_INF;
                        mx = fmaxf(mx, x[nt][e]);
                    }
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float m_new = fmaxf(m_run, mx);   // finite: position p0 is live
                const float corr = fa_exp2(m_run - m_new);  // m_run = -inf gives 0
                float p[2][2], sum = 0.0f;
#pragma unroll
                for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        p[nt][e] = fa_exp2(x[nt][e] - m_new);  // -inf gives 0
                        sum += p[nt][e];
                    }
                l_run = fmaf(l_run, corr, sum);
                m_run = m_new;
#pragma unroll
                for (int i = 0; i < DT; ++i) {
                    o[i][0] *= corr;
                    o[i][1] *= corr;
                }
                const unsigned a[4] = {fa_pack<T>(p[0][0], p[0][1]), 0u, fa_pack<T>(p[1][0], p[1][1]), 0u};
#pragma unroll
                for (int dp = 0; dp < DT / 2; ++dp) {
                    unsigned bv[4];
                    const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                    fa_ldsm_x4_trans(bv, vb + fa_sw<D>(r, dp * 2 + (lane >> 4)));
                    fa_mma<T>(o[2 * dp], a, bv[0], bv[1]);
                    fa_mma<T>(o[2 * dp + 1], a, bv[2], bv[3]);
                }
            }
        }
        fa_wait<0>();
    }

    // The block's partial result. l: the quad's shares summed; the warps' states through shared memory.
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
    float* red = dq_smem;                  // MM_WARPS × 8 heads × D f32
    float* mls = red + MM_WARPS * 8 * D;   // MM_WARPS × 8 heads × (m, l)
    __syncthreads();  // every warp is done with the stages
    if (tq == 0) {
        mls[(warp * 8 + hr) * 2 + 0] = m_run;
        mls[(warp * 8 + hr) * 2 + 1] = l_run;
    }
    __syncthreads();
    float M = NEG_INF;
#pragma unroll
    for (int w = 0; w < MM_WARPS; ++w) M = fmaxf(M, mls[(w * 8 + hr) * 2]);
    const float wsc = m_run == NEG_INF ? 0.0f : fa_exp2(m_run - M);
#pragma unroll
    for (int i = 0; i < DT; ++i) {
        float* dst = red + (warp * 8 + hr) * D + i * 8 + 2 * tq;
        dst[0] = o[i][0] * wsc;
        dst[1] = o[i][1] * wsc;
    }
    __syncthreads();
    for (int e = tid; e < group * D; e += MM_THREADS) {
        const int j = e / D, c = e % D;
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < MM_WARPS; ++w) sum += red[(w * 8 + j) * D + c];
        part_acc[(ml_base + (long long)j * n_splits) * D + c] = sum;
    }
    if (tid < group) {
        float Mj = NEG_INF, Lj = 0.0f;
#pragma unroll
        for (int w = 0; w < MM_WARPS; ++w) Mj = fmaxf(Mj, mls[(w * 8 + tid) * 2]);
#pragma unroll
        for (int w = 0; w < MM_WARPS; ++w) {
            const float mw = mls[(w * 8 + tid) * 2];
            if (mw != NEG_INF) Lj = fmaf(mls[(w * 8 + tid) * 2 + 1], fa_exp2(mw - Mj), Lj);
        }
        // Base 2 → natural log (decode_attn_merge weighs the splits by exp(m_s − M)).
        part_ml[(ml_base + (long long)tid * n_splits) * 2 + 0] = Mj == NEG_INF ? NEG_INF : Mj * 0.6931471805599453f;
        part_ml[(ml_base + (long long)tid * n_splits) * 2 + 1] = Lj;
    }
    if (counters == nullptr) return;
    merge_in_last_block<T, D>(part_ml, part_acc, counters, out, b, g, hkv, hq, h0, group, n_splits);
#else
    __trap();  // the host never launches it below sm_80
#endif
}

// decode_attn_mma_d{64,128}_{f16,bf16}: decode_attn_pipe's parameters (head_dim is D).
#define MM_KERNEL(D)                                                                                             \
    extern "C" __global__ void __launch_bounds__(MM_THREADS, 2) decode_attn_mma_d##D##_f16(                     \
        const __half* q, const __half* k_cache, const __half* v_cache, const int* row_pos, float* part_ml,      \
        float* part_acc, int* counters, __half* out, int B, int hq, int hkv, int head_dim, int max_len,         \
        int split_len, float scale) { pdl_wait();                                                              \
        decode_attn_mma_impl<__half, D>(q, k_cache, v_cache, row_pos, part_ml, part_acc, counters, out, B, hq,  \
                                        hkv, max_len, split_len, scale);                                       \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(MM_THREADS, 2) decode_attn_mma_d##D##_bf16(                    \
        const __nv_bfloat16* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, const int* row_pos, \
        float* part_ml, float* part_acc, int* counters, __nv_bfloat16* out, int B, int hq, int hkv,            \
        int head_dim, int max_len, int split_len, float scale) { pdl_wait();                                   \
        decode_attn_mma_impl<__nv_bfloat16, D>(q, k_cache, v_cache, row_pos, part_ml, part_acc, counters, out, \
                                               B, hq, hkv, max_len, split_len, scale);                         \
    }
MM_KERNEL(64)
MM_KERNEL(128)
