// gemv.cu — the decode-step linear layers: y[b, o] = Σ_i x[b, i] · W[o, i] for a handful of rows b
// (the samples of the batch), W a Hugging Face (out, in) weight shard, row-major.
//
// One warp owns one output row and streams it with 16-byte loads, every weight byte read exactly
// once. Session 5: each lane now issues GEMV_UNROLL independent weight loads before it uses any
// (8 × 16 bytes in flight per lane, 4 KiB per warp), and reads x through the read-only cache. Both
// versions lose to cuBLAS on the H200: the first (two loads in flight) 18.3 vs 15.5 ms per
// qwen2.5-14b TP=1 step on an older engine; this one, same model at 10K, per step o 1 163 vs 845 µs,
// qkv 1 419 vs 974, down 2 728 vs 1 851, gate/up 3 981 vs 3 130 (results/h200-cuda-engine.md,
// session 5). One row per warp and a grid of out/8 blocks leave too few bytes in flight per SM
// across waves; cuBLAS serves the decode GEMMs. Which projections use it: TPPROF_CUDA_GEMV
// (model.rs, GemvOps), default none.
//
// Requirements (the host checks them and falls back to cuBLAS otherwise): in % 8 == 0, W and x
// 16-byte aligned (x rows too: x_ld % 8 == 0), 1 <= n_rows <= GEMV_MAX_ROWS.
// Accumulation in f32; the warp sum is a shuffle tree (a different order than cuBLAS: results agree
// within the usual f32 rounding).

// Helpers (to_f32, from_f32, unpack8, reductions, NEG_INF) come from common.cuh, compiled in front of this file.

#define GEMV_MAX_ROWS 8
#define GEMV_WARPS 8
#define GEMV_UNROLL 8


// Weights are read once per step: a streaming load that does not displace x and the KV cache in L1.
__device__ __forceinline__ uint4 load_stream(const uint4* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

// gemv: y (n_rows × out) = x (n_rows × in, row stride x_ld) · Wᵀ; y has row stride y_ld and is f32
// when out_f32 != 0, else T.
//
// Launch: block = 32 * GEMV_WARPS (256) threads, grid = ceil(out / GEMV_WARPS), shared = 0.
template <typename T>
__device__ __forceinline__ void gemv_impl(const T* __restrict__ w, const T* __restrict__ x, void* __restrict__ y,
                                          int out, int in, int n_rows, int x_ld, int y_ld, int out_f32) {
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int o = blockIdx.x * GEMV_WARPS + warp;
    if (o >= out) return;
    const uint4* wrow = reinterpret_cast<const uint4*>(w + (long long)o * in);
    const int chunks = in / 8;  // 16-byte chunks per row
    float acc[GEMV_MAX_ROWS];
#pragma unroll
    for (int b = 0; b < GEMV_MAX_ROWS; ++b) acc[b] = 0.0f;

    for (int c0 = 0; c0 < chunks; c0 += 32 * GEMV_UNROLL) {
        // All of this round's weight loads first: GEMV_UNROLL in flight per lane.
        uint4 wv[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int c = c0 + u * 32 + lane;
            wv[u] = c < chunks ? load_stream(wrow + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int c = c0 + u * 32 + lane;
            if (c < chunks) {
                float wf[8];
                unpack8<T>(wv[u], wf);
#pragma unroll
                for (int b = 0; b < GEMV_MAX_ROWS; ++b) {
                    if (b < n_rows) {
                        float xf[8];
                        unpack8<T>(__ldg(reinterpret_cast<const uint4*>(x + (long long)b * x_ld) + c), xf);
                        float a = acc[b];
#pragma unroll
                        for (int i = 0; i < 8; ++i) a = fmaf(wf[i], xf[i], a);
                        acc[b] = a;
                    }
                }
            }
        }
    }
#pragma unroll
    for (int b = 0; b < GEMV_MAX_ROWS; ++b) {
        float v = acc[b];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        if (lane == 0 && b < n_rows) {
            const long long at = (long long)b * y_ld + o;
            if (out_f32) {
                reinterpret_cast<float*>(y)[at] = v;
            } else {
                reinterpret_cast<T*>(y)[at] = from_f32<T>(v);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_f16(const __half* w, const __half* x, void* y, int out, int in, int n_rows, int x_ld, int y_ld, int out_f32) {
    pdl_wait();
    gemv_impl<__half>(w, x, y, out, in, n_rows, x_ld, y_ld, out_f32);
}

extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_bf16(const __nv_bfloat16* w, const __nv_bfloat16* x, void* y, int out, int in, int n_rows, int x_ld, int y_ld, int out_f32) {
    pdl_wait();
    gemv_impl<__nv_bfloat16>(w, x, y, out, in, n_rows, x_ld, y_ld, out_f32);
}
