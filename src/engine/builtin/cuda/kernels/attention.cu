//! attention.cu — the non-GEMM parts of attention: the causal softmax of prefill (between the two
//! cuBLAS GEMMs S = Q·Kᵀ·scale and O = P·V), and flash-decoding for the decode step (a split-KV
//! partial pass that reads every K/V element once per (sample, kv head) for the whole GQA group,
//! then a combine over splits).
//
// All softmax math is f32 with max subtraction and IEEE expf (no fast-math).

// Helpers (to_f32, from_f32, unpack8, reductions, NEG_INF) come from common.cuh, compiled in front of this file.



// ------------------------------------------------------------------------------------------------
// causal_softmax: scores (f32) and probs (T) are row-major (n_rows, kv_len). Row r is query
// i = r % q_chunk of the chunk, at absolute position q0 + i; keys j <= q0 + i are valid
// (valid = min(q0 + i + 1, kv_len) of them), keys beyond get probability exactly 0.
//   p_j = expf(s_j - M) * (1 / L),  M = max over valid s_j,  L = sum over valid expf(s_j - M)
// (multiplying by 1/L mirrors the cpu engine's softmax_prefix). scores already include 1/sqrt(d).
// Two passes over the row: pass 1 keeps a per-thread online (max, sum) that the block combines,
// pass 2 writes. expf is the IEEE version (no fast-math).
//
// Launch: grid = (n_rows, 1, 1), block = 256 (any multiple of 32 up to 1024), shared = 0.
template <typename T>
__device__ __forceinline__ void causal_softmax_impl(const float* __restrict__ scores, T* __restrict__ probs, int n_rows,
                                                    int q_chunk, int kv_len, int q0) {
    __shared__ float red[32];
    const int r = blockIdx.x;
    if (r >= n_rows) return;  // block-uniform
    const int i = r % q_chunk;
    const long long valid_ll = (long long)q0 + i + 1;
    const int valid = valid_ll < (long long)kv_len ? (int)valid_ll : kv_len;
    const float* s = scores + (long long)r * kv_len;
    T* p = probs + (long long)r * kv_len;

    // Pass 1: per-thread online softmax statistics. m starts at -inf; the first finite x gives
    // l = 0 * expf(-inf) + 1 = 1. -inf scores (none expected) are skipped to avoid inf - inf.
    float m = NEG_INF, l = 0.0f;
    for (int j = threadIdx.x; j < valid; j += blockDim.x) {
        const float x = s[j];
        if (x == NEG_INF) continue;
        if (x > m) {
            l = fmaf(l, expf(m - x), 1.0f);
            m = x;
        } else {
            l += expf(x - m);
        }
    }
    const float M = block_max(m, red);
    const float lt = (m == NEG_INF) ? 0.0f : l * expf(m - M);
    const float L = block_sum(lt, red);
    const float inv = 1.0f / L;

    // Pass 2: write probabilities; the masked tail (j >= valid) gets exact zeros.
    for (int j = threadIdx.x; j < kv_len; j += blockDim.x) {
        p[j] = from_f32<T>(j < valid ? expf(s[j] - M) * inv : 0.0f);
    }
}

extern "C" __global__ void __launch_bounds__(1024) causal_softmax_f16(const float* scores, __half* probs, int n_rows,
                                                                      int q_chunk, int kv_len, int q0) {
    pdl_wait();
    causal_softmax_impl<__half>(scores, probs, n_rows, q_chunk, kv_len, q0);
}

extern "C" __global__ void __launch_bounds__(1024) causal_softmax_bf16(const float* scores, __nv_bfloat16* probs,
                                                                       int n_rows, int q_chunk, int kv_len, int q0) {
    pdl_wait();
    causal_softmax_impl<__nv_bfloat16>(scores, probs, n_rows, q_chunk, kv_len, q0);
}

// ------------------------------------------------------------------------------------------------
// decode_attn_partial: flash-decoding, one block per (kv head g, split s, sample b).
//
// Launch: grid = (hkv, n_splits, B), block = 128 EXACTLY (DEC_THREADS; __launch_bounds__(128)),
//   dynamic shared memory = group * (head_dim + DEC_TILE + 3) * 4 bytes = group * (head_dim + 35) * 4
//   (group = hq / hkv; e.g. group 7, d 128: 4676 B; the maximum group 16, d 256: 18624 B < 48 KiB,
//   so no cudaFuncSetAttribute is needed). More shared memory than that is harmless.
// Constraints: hq % hkv == 0; 1 <= group <= DEC_GMAX (16); head_dim even, 2 <= head_dim <= 256
//   (head_dim / 2 <= 128 threads); q, k_cache, v_cache 4-byte aligned (cudaMalloc'd base +
//   even element offsets); 0 <= row_pos[b] < max_len; split_len >= 1 (a multiple of 32 wastes no
//   tile slots). Sample b's cache is slot b.
//
// Inputs: q (hq, B, d) head-major: q[((long long)h * B + b) * d + i]; k/v cache (slots, hkv,
//   max_len, d); kv_len_b = row_pos[b] + 1; split s covers [s*split_len, min((s+1)*split_len, kv_len_b)).
// Outputs for each query head h = g*group + j of the block (n_splits = gridDim.y):
//   part_ml[(((long long)b * hq + h) * n_splits + s) * 2 + 0] = m = max of scale * q·k over the split
//   part_ml[... + 1]                                          = l = sum exp(score - m)
//   part_acc[(((long long)b * hq + h) * n_splits + s) * d + i] = sum exp(score - m) * v_i (unnormalized)
//   An empty split writes m = -inf, l = 0 and leaves its part_acc entries UNWRITTEN (the combine
//   below never reads them; a different consumer must check l > 0 first).
//
// Structure (per tile of DEC_TILE = 32 positions, three phases separated by __syncthreads):
//   1. scores: 8 lanes per position (4 positions per warp at a time, 16 per block), each lane
//      reading K as element pairs; every K element is read once and dotted with all `group`
//      q vectors (q in shared memory, f32); a 3-step shuffle reduce within the 8 lanes.
//   2. online softmax: one warp per query head, lane t = position t of the tile: tile max,
//      new running max, rescale factor corr = exp(m_old - m_new), p_t = exp(score_t - m_new),
//      l = l*corr + sum p. p overwrites the score in shared memory.
//   3. P·V: thread (p3, c) owns the element pair c of V (2 dims) for every query head of the group
//      (acc in registers: DEC_GMAX x 2 floats) and handles positions t = p3, p3 + PL3, ...; every V
//      element is read once. acc is rescaled by corr before adding the tile.
//   At the end the PL3 = 128 / (d/2) position lanes' acc are summed (fixed order) in shared
//   memory and written out.
// Numerics: f32 dot products (FMA) and accumulators; score = dot * scale; IEEE expf.

#define DEC_THREADS 128
#define DEC_TILE 32  // == warp size: phase 2 maps one lane per tile position
#define DEC_GMAX 16

extern __shared__ __align__(16) float dec_smem[];

template <typename T>
__device__ __forceinline__ void decode_attn_partial_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
                                                         const T* __restrict__ v_cache, const int* __restrict__ row_pos,
                                                         float* __restrict__ part_ml, float* __restrict__ part_acc,
                                                         int B, int hq, int hkv, int d, int max_len, int split_len,
                                                         float scale) {
    const int g = blockIdx.x, s = blockIdx.y, b = blockIdx.z;
    const int n_splits = gridDim.y;
    const int group = hq / hkv;
    const int h0 = g * group;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n_warps = DEC_THREADS / 32;
    const int gd = group * d;

    const int kv_len = row_pos[b] + 1;
    int start, end;
    split_bounds(kv_len, s, split_len, start, end);

    // Output bases: head h0 + j of sample b, split s.
    const long long ml_base = ((long long)b * hq + h0) * n_splits + s;  // + j * n_splits for head j

    if (start >= end) {  // block-uniform: the whole block returns, no barrier is skipped
        // Only (m, l) are written: part_acc of an empty split is never read by the combine
        // (l == 0 gives it weight 0 and it is skipped), and the host typically launches
        // n_splits = ceil(max_len / split_len), so most splits are empty for short contexts:
        // writing group*d zeros for each of them would cost nearly as much as reading the cache.
        for (int j = tid; j < group; j += DEC_THREADS) {
            part_ml[(ml_base + (long long)j * n_splits) * 2 + 0] = NEG_INF;
            part_ml[(ml_base + (long long)j * n_splits) * 2 + 1] = 0.0f;
        }
        return;
    }

    // Shared memory layout (floats): q_s[group*d] | sc[DEC_TILE*group] | m_s[group] | l_s[group] | c_s[group]
    float* q_s = dec_smem;
    float* sc = q_s + gd;          // sc[t * group + j]: score, then probability, of tile position t, head j
    float* m_s = sc + DEC_TILE * group;
    float* l_s = m_s + group;
    float* c_s = l_s + group;

    for (int x = tid; x < gd; x += DEC_THREADS) {
        const int j = x / d, i = x - (x / d) * d;
        q_s[x] = to_f32(q[((long long)(h0 + j) * B + b) * d + i]);
    }
    for (int j = tid; j < group; j += DEC_THREADS) {
        m_s[j] = NEG_INF;
        l_s[j] = 0.0f;
        c_s[j] = 1.0f;
    }
    __syncthreads();

    const int npairs = d >> 1;
    // Phase-1 mapping: 8 lanes per position.
    const int sl = lane & 7, pl = lane >> 3;
    // Phase-3 mapping: thread = (p3, c3), c3 = element pair, p3 = position lane.
    const int PL3 = DEC_THREADS / npairs;  // >= 1 because npairs <= 128
    const int c3 = tid % npairs, p3 = tid / npairs;

    const long long head_base = ((long long)b * hkv + g) * max_len;  // row index of position 0
    const T* kh = k_cache + head_base * d;
    const T* vh = v_cache + head_base * d;

    float acc[DEC_GMAX][2];
#pragma unroll
    for (int j = 0; j < DEC_GMAX; ++j) acc[j][0] = acc[j][1] = 0.0f;

    for (int t0 = start; t0 < end; t0 += DEC_TILE) {
        const int nt = min(DEC_TILE, end - t0);

        // Phase 1: scores. tb is warp-uniform, so the full-mask shuffles are executed by all 32
        // lanes; lanes whose position is past the tile contribute zeros and write nothing.
        for (int tb = warp * 4; tb < nt; tb += n_warps * 4) {
            const int t = tb + pl;
            float part[DEC_GMAX];
#pragma unroll
            for (int j = 0; j < DEC_GMAX; ++j) part[j] = 0.0f;
            if (t < nt) {
                const T* krow = kh + (long long)(t0 + t) * d;
#pragma unroll 2
                for (int c = sl; c < npairs; c += 8) {
                    const float2 kv = load2_f32(krow + 2 * c);
#pragma unroll
                    for (int j = 0; j < DEC_GMAX; ++j) {
                        if (j < group) {
                            const float2 qq = *reinterpret_cast<const float2*>(q_s + j * d + 2 * c);
                            part[j] = fmaf(qq.x, kv.x, part[j]);
                            part[j] = fmaf(qq.y, kv.y, part[j]);
                        }
                    }
                }
            }
#pragma unroll
            for (int j = 0; j < DEC_GMAX; ++j) {
                if (j < group) {  // group is block-uniform: no divergence around the shuffles
                    float v = part[j];
                    v += __shfl_xor_sync(0xffffffffu, v, 4);
                    v += __shfl_xor_sync(0xffffffffu, v, 2);
                    v += __shfl_xor_sync(0xffffffffu, v, 1);
                    if (sl == 0 && t < nt) sc[t * group + j] = v * scale;
                }
            }
        }
        __syncthreads();

        // Phase 2: online softmax update, one warp per head, lane = tile position.
        for (int j = warp; j < group; j += n_warps) {
            const float sv = lane < nt ? sc[lane * group + j] : NEG_INF;
            const float tile_max = warp_max(sv);
            const float m_old = m_s[j];
            const float m_new = fmaxf(m_old, tile_max);
            // m_new == -inf only if every score so far is -inf (not expected): keep everything 0.
            const bool dead = (m_new == NEG_INF);
            const float corr = dead ? 1.0f : expf(m_old - m_new);  // m_old = -inf gives 0
            const float p = (lane < nt && !dead) ? expf(sv - m_new) : 0.0f;
            const float psum = warp_sum(p);
            __syncwarp();  // every lane has read m_s[j] before lane 0 overwrites it
            if (lane < nt) sc[lane * group + j] = p;
            if (lane == 0) {
                m_s[j] = m_new;
                l_s[j] = fmaf(l_s[j], corr, psum);
                c_s[j] = corr;
            }
        }
        __syncthreads();

        // Phase 3: acc = acc * corr + sum_t p_t * v_t.
        if (p3 < PL3) {
#pragma unroll
            for (int j = 0; j < DEC_GMAX; ++j) {
                if (j < group) {
                    const float cr = c_s[j];
                    acc[j][0] *= cr;
                    acc[j][1] *= cr;
                }
            }
            const T* vcol = vh + (long long)t0 * d + 2 * c3;
#pragma unroll 2
            for (int t = p3; t < nt; t += PL3) {
                const float2 vv = load2_f32(vcol + (long long)t * d);
#pragma unroll
                for (int j = 0; j < DEC_GMAX; ++j) {
                    if (j < group) {
                        const float pj = sc[t * group + j];
                        acc[j][0] = fmaf(pj, vv.x, acc[j][0]);
                        acc[j][1] = fmaf(pj, vv.y, acc[j][1]);
                    }
                }
            }
        }
        __syncthreads();  // sc / c_s are rewritten by the next tile
    }

    // m and l of each head (final after the loop's last barrier).
    for (int j = tid; j < group; j += DEC_THREADS) {
        part_ml[(ml_base + (long long)j * n_splits) * 2 + 0] = m_s[j];
        part_ml[(ml_base + (long long)j * n_splits) * 2 + 1] = l_s[j];
    }

    // Sum the PL3 position lanes' acc in a fixed order into q_s (q is no longer needed; the last
    // barrier of the tile loop ordered every read of q_s before these writes).
    for (int p = 0; p < PL3; ++p) {
        if (p3 == p) {
#pragma unroll
            for (int j = 0; j < DEC_GMAX; ++j) {
                if (j < group) {
                    float* dst = q_s + j * d + 2 * c3;
                    if (p == 0) {
                        dst[0] = acc[j][0];
                        dst[1] = acc[j][1];
                    } else {
                        dst[0] += acc[j][0];
                        dst[1] += acc[j][1];
                    }
                }
            }
        }
        __syncthreads();
    }
    for (int x = tid; x < gd; x += DEC_THREADS) {
        const int j = x / d, i = x - (x / d) * d;
        part_acc[(ml_base + (long long)j * n_splits) * d + i] = q_s[x];
    }
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS) decode_attn_partial_f16(
    const __half* q, const __half* k_cache, const __half* v_cache, const int* row_pos, float* part_ml, float* part_acc,
    int B, int hq, int hkv, int head_dim, int max_len, int split_len, float scale) {
    pdl_wait();
    decode_attn_partial_impl<__half>(q, k_cache, v_cache, row_pos, part_ml, part_acc, B, hq, hkv, head_dim, max_len,
                                     split_len, scale);
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS) decode_attn_partial_bf16(
    const __nv_bfloat16* q, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, const int* row_pos,
    float* part_ml, float* part_acc, int B, int hq, int hkv, int head_dim, int max_len, int split_len, float scale) {
    pdl_wait();
    decode_attn_partial_impl<__nv_bfloat16>(q, k_cache, v_cache, row_pos, part_ml, part_acc, B, hq, hkv, head_dim,
                                            max_len, split_len, scale);
}

// ------------------------------------------------------------------------------------------------
// decode_attn_combine: per (sample b, query head h):
//   M = max over non-empty splits of m_s;  w_s = exp(m_s - M) (0 for empty splits, l_s = 0);
//   L = sum_s l_s * w_s;  out[b, h*d + i] = (sum_s acc_s,i * w_s) / L   (0 if L == 0, impossible
//   for kv_len >= 1). out is (B, hq*d) row-major: out[(long long)b * hq * d + h * d + i].
// Splits are processed in chunks of COMB_CHUNK weights kept in static shared memory, so any
// n_splits works without dynamic shared memory.
//
// Launch: grid = (hq, B, 1), block = 128 (any multiple of 32 up to 1024), shared = 0
//   (static: 1 KiB + 128 B).

#define COMB_CHUNK 256

template <typename T>
__device__ __forceinline__ void decode_attn_combine_impl(const float* __restrict__ part_ml,
                                                         const float* __restrict__ part_acc, T* __restrict__ out,
                                                         int B, int hq, int d, int n_splits) {
    __shared__ float red[32];
    __shared__ float w_s[COMB_CHUNK];
    const int h = blockIdx.x, b = blockIdx.y;
    if (h >= hq || b >= B) return;  // block-uniform
    const long long base = ((long long)b * hq + h) * n_splits;
    const float* ml = part_ml + base * 2;
    const float* acc = part_acc + base * d;

    // Non-empty splits form a prefix (split s covers [s*split_len, ...) of one kv_len), so the
    // weighted sum runs over s < live without a per-split branch: its loads are independent and
    // the unrolled loop keeps several in flight (with a branch per split the loads are issued one
    // at a time, and the kernel waits on memory latency once per split).
    float mx = NEG_INF, last = -1.0f;
    for (int s = threadIdx.x; s < n_splits; s += blockDim.x) {
        if (ml[2 * s + 1] > 0.0f) {
            mx = fmaxf(mx, ml[2 * s]);
            last = fmaxf(last, (float)s);
        }
    }
    const float M = block_max(mx, red);
    const int live = (int)block_max(last, red) + 1;
    float ls = 0.0f;
    for (int s = threadIdx.x; s < live; s += blockDim.x) {
        ls = fmaf(ml[2 * s + 1], expf(ml[2 * s] - M), ls);
    }
    const float L = block_sum(ls, red);

    T* o = out + (long long)b * hq * d + (long long)h * d;
    for (int i0 = 0; i0 < d; i0 += blockDim.x) {  // block-uniform loop: barriers inside are safe
        const int i = i0 + threadIdx.x;
        float a = 0.0f;
        for (int cb = 0; cb < live; cb += COMB_CHUNK) {
            const int cn = min(COMB_CHUNK, live - cb);
            __syncthreads();  // the previous chunk's weights are no longer read
            for (int k = threadIdx.x; k < cn; k += blockDim.x) {
                w_s[k] = expf(ml[2 * (cb + k)] - M);
            }
            __syncthreads();
            if (i < d) {
                const float* ac = acc + (long long)cb * d + i;
#pragma unroll 8
                for (int k = 0; k < cn; ++k) a = fmaf(ac[(long long)k * d], w_s[k], a);
            }
        }
        if (i < d) o[i] = from_f32<T>(L > 0.0f ? a / L : 0.0f);
    }
}

extern "C" __global__ void __launch_bounds__(1024) decode_attn_combine_f16(const float* part_ml, const float* part_acc,
                                                                           __half* out, int B, int hq, int head_dim,
                                                                           int n_splits) {
    pdl_wait();
    decode_attn_combine_impl<__half>(part_ml, part_acc, out, B, hq, head_dim, n_splits);
}

extern "C" __global__ void __launch_bounds__(1024) decode_attn_combine_bf16(const float* part_ml, const float* part_acc,
                                                                            __nv_bfloat16* out, int B, int hq,
                                                                            int head_dim, int n_splits) {
    pdl_wait();
    decode_attn_combine_impl<__nv_bfloat16>(part_ml, part_acc, out, B, hq, head_dim, n_splits);
}
