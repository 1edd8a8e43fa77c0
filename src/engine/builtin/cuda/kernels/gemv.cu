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

// ---------------------------------------------------------------------------------------------
// gemv_bulk (sm_90+): the same y = x · Wᵀ, with the weights streamed by the copy engine instead of
// by each thread's loads. Session 12.
//
// Why: gemv above spends one load instruction per 16 bytes and keeps at most 4 KiB per warp in
// flight, in rounds; cuBLAS reads the decode projections at 2.5–2.85 TB/s on an H100 (3.0 TB/s copy).
// Here one lane per warp issues cp.async.bulk copies of whole chunks (GB_CHUNK bytes of one weight
// row) into a ring of `stages` shared-memory buffers, each with an mbarrier that completes when its
// bytes have landed; the warp's 32 lanes only read shared memory and do the FMAs.
//
// Work split (persistent: one wave, every block the same number of bytes ± one row):
//   block b owns the rows [b·out/nb, (b+1)·out/nb), a contiguous range of W;
//   its rows are cut into units — chunk k of row r is GB_CHUNK bytes (the last of a row may be
//   shorter) — and warp w of nw takes the units [w·U/nw, (w+1)·U/nw): a warp may start or end in
//   the middle of a row: such a row's partial sums wait in shared memory and are added in warp
//   order when the block writes its rows at the end (deterministic: no atomics).
//   The first `stages` chunks of every warp are requested before pdl_wait(): the weights are never
//   written by an earlier kernel, so under programmatic dependent launch their stream starts while
//   the kernel ahead of this one finishes. x (n_rows × in) is copied to shared memory after the wait.
//
// Launch: grid nb (≤ out), block 32·nw threads, dynamic shared memory gemv_bulk_smem(...) bytes (the
// host computes the same sum: ring nw·stages·GB_CHUNK, barriers nw·stages·8, x n_rows·in·sizeof(T),
// row sums n_rows·ceil(out/nb)·4, shared-row slots 2·nw·(1 + n_rows)·4).
// Requirements (host-checked): sm_90, in % 8 == 0, W, x and y_ld as for gemv, 1 <= n_rows <= GEMV_MAX_ROWS.

#define GB_CHUNK 2048
#define GB_VEC_PER_LANE (GB_CHUNK / 16 / 32)

__device__ __forceinline__ unsigned gb_smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void gb_bar_init(unsigned long long* bar, unsigned count) {
#if __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(gb_smem_addr(bar)), "r"(count) : "memory");
#endif
}

// Makes the barriers' initialisation visible to the copy engine (the async proxy).
__device__ __forceinline__ void gb_fence_bar_init() {
#if __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// An L2 policy for the weights: each byte is read once per step, so it goes first when L2 needs room
// (x, the residual and the KV cache stay).
__device__ __forceinline__ unsigned long long gb_evict_first() {
    unsigned long long policy = 0;
#if __CUDA_ARCH__ >= 900
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
#endif
    return policy;
}

// One chunk: `bytes` (a multiple of 16) from global src to shared dst; the barrier's current phase
// completes when they have arrived (this thread's arrival + the expected transaction bytes).
__device__ __forceinline__ void gb_copy(void* dst, const void* src, unsigned bytes, unsigned long long* bar,
                                        unsigned long long policy) {
#if __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(gb_smem_addr(bar)), "r"(bytes) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;\n"
                 ::"r"(gb_smem_addr(dst)), "l"(src), "r"(bytes), "r"(gb_smem_addr(bar)), "l"(policy)
                 : "memory");
#endif
}

// 16 bytes from shared memory in one ld.shared.v4 (p 16-byte aligned): through a T* the compiler
// would load element by element (2-byte loads, 4-way bank conflicts).
__device__ __forceinline__ uint4 gb_lds16(const void* p) {
    uint4 r = make_uint4(0, 0, 0, 0);
#if __CUDA_ARCH__ >= 900
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "r"(gb_smem_addr(p)));
#endif
    return r;
}

// Waits until the barrier's phase with this parity has completed: with mbarrier.try_wait (which may
// suspend the thread until the phase completes or a system-dependent time limit passes), or, when
// `spin`, polling with the non-blocking mbarrier.test_wait. Measured on an H100 with try_wait: each
// warp moved about one unit per microsecond whatever its ring depth (results/h100-gemv-bulk.md);
// `spin` is the A/B for whether the suspension is what sets that pace.
__device__ __forceinline__ void gb_wait(unsigned long long* bar, unsigned parity, int spin) {
#if __CUDA_ARCH__ >= 900
    unsigned done = 0;
    if (spin) {
        do {
            asm volatile(
                "{\n .reg .pred p;\n mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
                : "=r"(done)
                : "r"(gb_smem_addr(bar)), "r"(parity)
                : "memory");
        } while (!done);
        return;
    }
    do {
        asm volatile(
            "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(gb_smem_addr(bar)), "r"(parity)
            : "memory");
    } while (!done);
#endif
}

// Shared-memory layout (the host's gemv_bulk_smem in model.rs computes the same): the ring at 0
// (nw·stages chunks), the barriers after it (nw·stages × 8 bytes), x at the next 16-byte boundary
// (n_rows × in elements), the row sums after x (n_rows × rows_max f32), then the shared rows'
// slots: their rows (2·nw int) and partial sums (2·nw × n_rows f32).
__device__ __forceinline__ unsigned gb_x_offset(int nw, int stages) {
    return ((unsigned)nw * stages * (GB_CHUNK + 8) + 15u) & ~15u;
}

// What gemv_bulk's x is (x_mode) and where its y goes (y_mode): with them the decode step's
// RMSNorm and SwiGLU gating run inside the GEMV that consumes them, and the residual add inside the
// one that produces it (one GPU: no all-reduce in between), instead of add_rmsnorm and silu_mul
// kernels (TPPROF_CUDA_FUSE=1).
#define GB_X_PLAIN 0    // x: T, n_rows × x_ld
#define GB_X_RMSNORM 1  // x: the f32 residual stream (n_rows × x_ld): each block normalizes it with
                        // norm_w (f32, in) and eps, as add_rmsnorm does (without a delta)
#define GB_X_SWIGLU 2   // x: T gate_up (n_rows × x_ld, gate [0, in), up [in, 2 in)): silu(gate) · up,
                        // as silu_mul does
#define GB_Y_PLAIN 0      // y: T or f32 (out_f32), n_rows × y_ld
#define GB_Y_ADD_RESID 1  // y: the f32 residual stream, n_rows × y_ld: y += T(x · Wᵀ)

// x (n_rows × in, T) into shared memory, as x_mode says. All threads of the block; the caller syncs.
template <typename T>
__device__ __forceinline__ void gb_load_x(const void* __restrict__ x, T* __restrict__ xs, int in, int n_rows, int x_ld,
                                          int x_mode, const float* __restrict__ norm_w, float eps) {
    const int cx = in / 8;  // 8-element pieces per row
    if (x_mode == GB_X_PLAIN) {
        const T* xt = reinterpret_cast<const T*>(x);
        for (int i = threadIdx.x; i < n_rows * cx; i += blockDim.x) {
            const int br = i / cx, c = i - br * cx;
            reinterpret_cast<uint4*>(xs)[i] = __ldg(reinterpret_cast<const uint4*>(xt + (long long)br * x_ld) + c);
        }
    } else if (x_mode == GB_X_SWIGLU) {
        const T* xt = reinterpret_cast<const T*>(x);
        for (int i = threadIdx.x; i < n_rows * cx; i += blockDim.x) {
            const int br = i / cx, c = i - br * cx;
            const T* row = xt + (long long)br * x_ld;
            float g[8], u[8];
            const uint4 gq = __ldg(reinterpret_cast<const uint4*>(row) + c);
            const uint4 uq = __ldg(reinterpret_cast<const uint4*>(row + in) + c);
            unpack8<T>(gq, g);
            unpack8<T>(uq, u);
            T o[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) o[e] = from_f32<T>((g[e] / (1.0f + expf(-g[e]))) * u[e]);
            reinterpret_cast<uint4*>(xs)[i] = *reinterpret_cast<const uint4*>(o);
        }
    } else {
        __shared__ float red[32];
        const float* xf = reinterpret_cast<const float*>(x);
        for (int br = 0; br < n_rows; ++br) {
            const float4* row = reinterpret_cast<const float4*>(xf + (long long)br * x_ld);
            float ss = 0.0f;
            for (int c = threadIdx.x; c < in / 4; c += blockDim.x) {
                const float4 v = row[c];
                ss = fmaf(v.x, v.x, ss);
                ss = fmaf(v.y, v.y, ss);
                ss = fmaf(v.z, v.z, ss);
                ss = fmaf(v.w, v.w, ss);
            }
            ss = block_sum(ss, red);
            const float mean_square = __fdiv_rn(ss, (float)in);
            const float inv_rms = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean_square, eps)));
            const float4* nw4 = reinterpret_cast<const float4*>(norm_w);
            for (int c = threadIdx.x; c < in / 4; c += blockDim.x) {
                const float4 v = row[c], g = nw4[c];
                T* o = xs + (size_t)br * in + 4 * c;
                o[0] = from_f32<T>(__fmul_rn(__fmul_rn(v.x, inv_rms), g.x));
                o[1] = from_f32<T>(__fmul_rn(__fmul_rn(v.y, inv_rms), g.y));
                o[2] = from_f32<T>(__fmul_rn(__fmul_rn(v.z, inv_rms), g.z));
                o[3] = from_f32<T>(__fmul_rn(__fmul_rn(v.w, inv_rms), g.w));
            }
        }
    }
}

template <typename T>
__device__ __forceinline__ void gemv_bulk_impl(const T* __restrict__ w, const void* __restrict__ x, void* __restrict__ y,
                                               int out, int in, int n_rows, int x_ld, int y_ld, int out_f32, int stages,
                                               int x_mode, int y_mode, const float* __restrict__ norm_w, float eps,
                                               int spin) {
#if __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) unsigned char gb_smem[];
    const int nw = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nb = gridDim.x, b = blockIdx.x;
    const int r0 = (int)((long long)b * out / nb), r1 = (int)((long long)(b + 1) * out / nb);
    const int rows_max = (out + nb - 1) / nb;
    const int row_bytes = in * (int)sizeof(T);
    const int cpr = (row_bytes + GB_CHUNK - 1) / GB_CHUNK;  // chunks (units) per row
    const int units = (r1 - r0) * cpr;
    const int u0 = (int)((long long)units * warp / nw), u1 = (int)((long long)units * (warp + 1) / nw);
    const int n_units = u1 - u0;

    unsigned char* ring = gb_smem + (size_t)warp * stages * GB_CHUNK;
    unsigned long long* bars = reinterpret_cast<unsigned long long*>(gb_smem + (size_t)nw * stages * GB_CHUNK) + warp * stages;
    T* xs = reinterpret_cast<T*>(gb_smem + gb_x_offset(nw, stages));
    float* ys = reinterpret_cast<float*>(xs + (size_t)n_rows * in);
    // Rows a warp shares with its neighbours: their partial sums, per warp a head slot (its first row,
    // begun mid-row) and a tail slot (its last row, left mid-row), summed in warp order at the end.
    int* part_row = reinterpret_cast<int*>(ys + (size_t)n_rows * rows_max);
    float* part_val = reinterpret_cast<float*>(part_row + 2 * nw);

    // Unit u of this block: row r0 + u / cpr, chunk u % cpr; its bytes and where they start in W.
    auto unit_src = [&](int u, unsigned& bytes) -> const unsigned char* {
        const int r = r0 + u / cpr, k = u % cpr;
        const int off = k * GB_CHUNK;
        bytes = (unsigned)(row_bytes - off < GB_CHUNK ? row_bytes - off : GB_CHUNK);
        return reinterpret_cast<const unsigned char*>(w) + (long long)r * row_bytes + off;
    };

    const unsigned long long policy = gb_evict_first();
    if (lane == 0) {
        for (int s = 0; s < stages; ++s) gb_bar_init(&bars[s], 1);
        gb_fence_bar_init();
        for (int j = 0; j < stages && j < n_units; ++j) {
            unsigned bytes;
            const unsigned char* src = unit_src(u0 + j, bytes);
            gb_copy(ring + (size_t)j * GB_CHUNK, src, bytes, &bars[j], policy);
        }
    }
    __syncwarp();
    // Every block of this persistent grid is resident: the next kernel may be scheduled now, its
    // blocks filling SMs as ours finish (a gemv_bulk after this one starts streaming its weights).
    pdl_launch_dependents();

    pdl_wait();  // x is the previous kernel's output
    if (lane < 2) part_row[2 * warp + lane] = -1;
    gb_load_x<T>(x, xs, in, n_rows, x_ld, x_mode, norm_w, eps);
    __syncthreads();

    float acc[GEMV_MAX_ROWS];
#pragma unroll
    for (int br = 0; br < GEMV_MAX_ROWS; ++br) acc[br] = 0.0f;
    int rl = u0 / cpr, k = u0 % cpr;  // the current unit's row (within the block) and chunk
    int s = 0, phase = 0;             // its ring stage and that stage's barrier phase parity
    bool from_row_start = k == 0;     // whether this warp has the current row from its first unit
    for (int j = 0; j < n_units; ++j) {
        const int off = k * GB_CHUNK;
        const int elems = (row_bytes - off < GB_CHUNK ? row_bytes - off : GB_CHUNK) / (int)sizeof(T);
        gb_wait(&bars[s], (unsigned)phase, spin);
        const uint4* wv = reinterpret_cast<const uint4*>(ring + (size_t)s * GB_CHUNK);
        const int col0 = off / (int)sizeof(T);
#pragma unroll
        for (int i = 0; i < GB_VEC_PER_LANE; ++i) {
            const int v = lane + 32 * i;
            if (v * 8 < elems) {
                float wf[8];
                const uint4 wq = gb_lds16(wv + v);
                unpack8<T>(wq, wf);
#pragma unroll
                for (int br = 0; br < GEMV_MAX_ROWS; ++br) {
                    if (br < n_rows) {
                        float xf[8];
                        const uint4 xq = gb_lds16(reinterpret_cast<const uint4*>(xs + (size_t)br * in + col0) + v);
                        unpack8<T>(xq, xf);
                        float a = acc[br];
#pragma unroll
                        for (int e = 0; e < 8; ++e) a = fmaf(wf[e], xf[e], a);
                        acc[br] = a;
                    }
                }
            }
        }
        // Every lane is done with buffer s: refill it with unit j + stages. No proxy fence here (as
        // CUTLASS's TMA pipelines release a stage with an mbarrier arrive, no fence): with
        // fence.proxy.async before every refill a warp streamed one chunk per memory latency
        // (H100, 14B decode: the GEMVs 1.4–2.6× slower than cuBLAS, the time set by the warp count,
        // not the stages).
        __syncwarp();
        if (lane == 0 && j + stages < n_units) {
            unsigned bytes;
            const unsigned char* src = unit_src(u0 + j + stages, bytes);
            gb_copy(ring + (size_t)s * GB_CHUNK, src, bytes, &bars[s], policy);
        }
        // The row ends here (or the warp's range does): a row this warp has whole goes to ys, a
        // shared one to its head slot (begun mid-row) or tail slot. No atomics: the same sums in
        // the same order on every run.
        if (k == cpr - 1 || j == n_units - 1) {
            const bool whole = from_row_start && k == cpr - 1;
            const int slot = 2 * warp + (from_row_start ? 1 : 0);
#pragma unroll
            for (int br = 0; br < GEMV_MAX_ROWS; ++br) {
                if (br < n_rows) {
                    const float v = warp_sum(acc[br]);
                    if (lane == 0) {
                        if (whole) {
                            ys[br * rows_max + rl] = v;
                        } else {
                            part_val[slot * n_rows + br] = v;
                        }
                    }
                    acc[br] = 0.0f;
                }
            }
            if (!whole && lane == 0) part_row[slot] = rl;
            from_row_start = true;
        }
        if (++k == cpr) {
            k = 0;
            ++rl;
        }
        if (++s == stages) {
            s = 0;
            phase ^= 1;
        }
    }
    __syncthreads();
    const int nr = r1 - r0;
    for (int i = threadIdx.x; i < n_rows * nr; i += blockDim.x) {
        const int br = i / nr, r = i - br * nr;
        const long long at = (long long)br * y_ld + r0 + r;
        // A shared row: its warps' partial sums in warp order; else the sum its one warp wrote.
        float v = 0.0f;
        bool shared = false;
        for (int p = 0; p < 2 * nw; ++p) {
            if (part_row[p] == r) {
                v += part_val[p * n_rows + br];
                shared = true;
            }
        }
        if (!shared) v = ys[br * rows_max + r];
        if (y_mode == GB_Y_ADD_RESID) {
            // The residual add of add_rmsnorm (the delta rounded to T first, as there).
            float* res = reinterpret_cast<float*>(y);
            res[at] = __fadd_rn(res[at], to_f32(from_f32<T>(v)));
        } else if (out_f32) {
            reinterpret_cast<float*>(y)[at] = v;
        } else {
            reinterpret_cast<T*>(y)[at] = from_f32<T>(v);
        }
    }
#else
    pdl_wait();
    __trap();  // the host launches gemv_bulk only on sm_90 or newer
#endif
}

extern "C" __global__ void gemv_bulk_f16(const __half* w, const void* x, void* y, int out, int in, int n_rows, int x_ld, int y_ld,
                                         int out_f32, int stages, int x_mode, int y_mode, const float* norm_w, float eps, int spin) {
    gemv_bulk_impl<__half>(w, x, y, out, in, n_rows, x_ld, y_ld, out_f32, stages, x_mode, y_mode, norm_w, eps, spin);
}

extern "C" __global__ void gemv_bulk_bf16(const __nv_bfloat16* w, const void* x, void* y, int out, int in, int n_rows, int x_ld, int y_ld,
                                          int out_f32, int stages, int x_mode, int y_mode, const float* norm_w, float eps, int spin) {
    gemv_bulk_impl<__nv_bfloat16>(w, x, y, out, in, n_rows, x_ld, y_ld, out_f32, stages, x_mode, y_mode, norm_w, eps, spin);
}
