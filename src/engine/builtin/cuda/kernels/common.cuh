// common.cuh — helpers every kernel module uses. The registry (gpu.rs) compiles each .cu as this
// header followed by the module's source, so the .cu files do not #include it themselves.

#include <cuda_fp16.h>
#include <cuda_bf16.h>

// -inf as a bit pattern: NVRTC has no <math.h>, so INFINITY is not defined.
#define NEG_INF __int_as_float(0xff800000)

// The positions [start, end) of split s (split_len each) of a context of kv_len positions, clamped
// to it (a split past the context is empty: start == end == kv_len). In 64 bits: s * split_len may
// pass 2^31 for long caches.
__device__ __forceinline__ void split_bounds(int kv_len, int s, int split_len, int& start, int& end) {
    const long long start_ll = (long long)s * split_len;
    start = start_ll < (long long)kv_len ? (int)start_ll : kv_len;
    end = (long long)start + split_len < (long long)kv_len ? start + split_len : kv_len;
}

__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Two consecutive elements (p must be 4-byte aligned: even element offset, 4-byte aligned base).
__device__ __forceinline__ float2 load2_f32(const __half* p) {
    return __half22float2(*reinterpret_cast<const __half2*>(p));
}
__device__ __forceinline__ float2 load2_f32(const __nv_bfloat16* p) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}

// 8 elements of T packed in 16 bytes, unpacked to f32.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float* f) {
    const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = to_f32(e[i]);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide reductions; every thread gets the result. blockDim.x must be a multiple of 32, at
// most 1024; `red` is a 32-float shared buffer. The leading __syncthreads makes back-to-back
// calls on the same buffer safe.
__device__ __forceinline__ float block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return warp_sum(lane < n_warps ? red[lane] : 0.0f);
}
__device__ __forceinline__ float block_max(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return warp_max(lane < n_warps ? red[lane] : NEG_INF);
}

// Programmatic dependent launch (TPPROF_CUDA_PDL=1, sm_90+): a kernel launched with it may be scheduled
// while the kernel before it in the stream is still running, and must not touch memory until that
// one has completed and its writes are visible. Every kernel's first statement is pdl_wait() (the
// registry test in kernel.rs checks it): griddepcontrol.wait returns at once for a kernel launched
// without the attribute.
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Lets the next kernel in the stream (launched with programmatic dependent launch) be scheduled
// before this one has finished: its blocks take SM slots as this kernel's blocks leave and run up to
// their own pdl_wait(), which still waits for this kernel's completion and memory. A no-op without
// the launch attribute.
__device__ __forceinline__ void pdl_launch_dependents() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// ---------------------------------------------------------------------------------------------
// Tensor-core helpers (prefill.cu's prefill attention, decode.cu's decode_attn_mma): cp.async 16-byte
// copies, ldmatrix, mma.sync m16n8k16 with f32 accumulators, sm_80 or newer (compiled out below).

__device__ __forceinline__ void fa_cp_async16(void* smem, const void* gmem, bool live) {
#if __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    const int bytes = live ? 16 : 0;  // 0: the 16 bytes are zero-filled, nothing is read
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
#else
    // Older GPUs (decode_attn_pipe runs there): a plain copy through registers, same result.
    *reinterpret_cast<uint4*>(smem) = live ? *reinterpret_cast<const uint4*>(gmem) : make_uint4(0, 0, 0, 0);
#endif
}
__device__ __forceinline__ void fa_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void fa_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ void fa_ldsm_x4(unsigned (&r)[4], const void* smem) {
#if __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}
__device__ __forceinline__ void fa_ldsm_x4_trans(unsigned (&r)[4], const void* smem) {
#if __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}

// c (16×8 f32) += a (16×16, row) · b (16×8, col).
template <typename T>
__device__ __forceinline__ void fa_mma(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);
template <>
__device__ __forceinline__ void fa_mma<__half>(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
template <>
__device__ __forceinline__ void fa_mma<__nv_bfloat16>(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Two floats rounded to T, packed (x in the low half: the lower column / key).
template <typename T>
__device__ __forceinline__ unsigned fa_pack(float x, float y);
template <>
__device__ __forceinline__ unsigned fa_pack<__half>(float x, float y) {
    __half2 h = __floats2half2_rn(x, y);
    return *reinterpret_cast<unsigned*>(&h);
}
template <>
__device__ __forceinline__ unsigned fa_pack<__nv_bfloat16>(float x, float y) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<unsigned*>(&h);
}

// Element offset of 16-byte chunk `chunk` of row `row` in a swizzled tile of D-element rows.
template <int D>
__device__ __forceinline__ int fa_sw(int row, int chunk) {
    return row * D + ((chunk ^ (row & 7)) << 3);
}

// 2^x, flushing subnormal results to 0 (ex2.approx.ftz: one MUFU, no range fix-up; -inf gives 0).
__device__ __forceinline__ float fa_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
// ldmatrix .x4 (.trans) at a shared-window address.
__device__ __forceinline__ void fa_ldsm_x4_a(unsigned (&r)[4], unsigned s) {
#if __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}
__device__ __forceinline__ void fa_ldsm_x4_trans_a(unsigned (&r)[4], unsigned s) {
#if __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}
