//! activation.cu — SwiGLU gating of the MLP: out = silu(gate) * up, from the fused gate/up GEMM.
//
// Numerics mirror the cpu engine (ops.rs silu / silu_mul): silu(x) = x / (1 + expf(-x)) with IEEE
// expf and division (no fast-math), then one f32 multiply by up, then rounding to T.

// Helpers (to_f32, from_f32, unpack8, reductions, NEG_INF) come from common.cuh, compiled in front of this file.


// silu_mul: gate_up is (n_rows, 2*inter) row-major, gate = columns [0, inter), up = [inter, 2*inter);
// out is (n_rows, inter): out[r, c] = T( silu(gate[r, c]) * up[r, c] ).
//
// Launch (1-D grid-stride over n_rows*inter, any configuration is correct):
//   block = 256 (any size), grid = clamp(ceil(n_rows*inter / 256), 1, 65535), shared = 0.
// The element index e is split into (r, c) once per thread; the grid stride is then applied
// incrementally, so there is no 64-bit division per element.
template <typename T>
__device__ __forceinline__ void silu_mul_impl(const T* __restrict__ gate_up, T* __restrict__ out, int n_rows, int inter) {
    if (n_rows <= 0 || inter <= 0) return;
    const long long n = (long long)n_rows * inter;
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long stride_r = stride / inter;
    const int stride_c = (int)(stride % inter);
    long long r = e / inter;
    int c = (int)(e % inter);
    for (; e < n; e += stride) {
        // Invariant: e == r * inter + c, 0 <= c < inter.
        const T* row = gate_up + r * 2 * (long long)inter;
        const float g = to_f32(row[c]);
        const float u = to_f32(row[inter + c]);
        const float silu = g / (1.0f + expf(-g));
        out[e] = from_f32<T>(silu * u);
        c += stride_c;
        r += stride_r;
        if (c >= inter) { c -= inter; r += 1; }
    }
}

// silu_mul8: the same, 8 elements per 16-byte load and store. Requires inter % 8 == 0 and
// gate_up / out 16-byte aligned (the host checks and else launches silu_mul). Same numerics.
// Launch: block = 256, grid = clamp(ceil(n_rows*inter/8 / 256), 1, 65535), shared = 0.
template <typename T>
__device__ __forceinline__ void silu_mul8_impl(const T* __restrict__ gate_up, T* __restrict__ out, int n_rows, int inter) {
    if (n_rows <= 0 || inter <= 0) return;
    const int per_row = inter >> 3;
    const long long n = (long long)n_rows * per_row;
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long stride_r = stride / per_row;
    const int stride_c = (int)(stride % per_row);
    long long r = e / per_row;
    int c = (int)(e % per_row);
    for (; e < n; e += stride) {
        // Invariant: e == r * per_row + c, 0 <= c < per_row.
        const T* row = gate_up + r * 2 * (long long)inter;
        const uint4 gv = *reinterpret_cast<const uint4*>(row + c * 8);
        const uint4 uv = *reinterpret_cast<const uint4*>(row + inter + c * 8);
        float g[8], u[8];
        unpack8<T>(gv, g);
        unpack8<T>(uv, u);
        uint4 ov;
        T* o = reinterpret_cast<T*>(&ov);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const float silu = g[k] / (1.0f + expf(-g[k]));
            o[k] = from_f32<T>(silu * u[k]);
        }
        *reinterpret_cast<uint4*>(out + r * (long long)inter + c * 8) = ov;
        c += stride_c;
        r += stride_r;
        if (c >= per_row) { c -= per_row; r += 1; }
    }
}

extern "C" __global__ void silu_mul8_f16(const __half* gate_up, __half* out, int n_rows, int inter) {
    pdl_wait();
    silu_mul8_impl<__half>(gate_up, out, n_rows, inter);
}

extern "C" __global__ void silu_mul8_bf16(const __nv_bfloat16* gate_up, __nv_bfloat16* out, int n_rows, int inter) {
    pdl_wait();
    silu_mul8_impl<__nv_bfloat16>(gate_up, out, n_rows, inter);
}

extern "C" __global__ void silu_mul_f16(const __half* gate_up, __half* out, int n_rows, int inter) {
    pdl_wait();
    silu_mul_impl<__half>(gate_up, out, n_rows, inter);
}

extern "C" __global__ void silu_mul_bf16(const __nv_bfloat16* gate_up, __nv_bfloat16* out, int n_rows, int inter) {
    pdl_wait();
    silu_mul_impl<__nv_bfloat16>(gate_up, out, n_rows, inter);
}
