//! prefill.cu — causal attention of one prompt on tensor cores, FlashAttention-2 style: one block per
//! (query head, tile of BM queries), K/V tiles of 64 keys streamed through shared memory with
//! cp.async (two stages), S = Q·Kᵀ and O += P·V with mma.sync m16n8k16 (fp16/bf16 in, f32
//! accumulate), an online softmax in registers; neither the scores nor the probabilities ever reach
//! global memory.
//
// Layouts (those of model.rs):
//   q       (hq, n, D): query head h, prompt position i at q[((long long)h * n + i) * D]
//   k, v    this slot's cache, (hkv, max_len, D): KV head g, position j at k[((long long)g * max_len + j) * D]
//   out     (n, hq * D) row-major: out[(long long)i * hq * D + h * D + c]
//   GQA: query head h reads KV head h / (hq / hkv). Positions are 0..n-1 (a whole prompt); query i
//   sees keys 0..i.
//
// Per block: WARPS warps, BM = 16 * WARPS queries (16 rows per warp, the M of one mma), keys in
// tiles of FA_BN = 64. A warp keeps its Q rows as mma A fragments in registers (D/16 k-steps), its
// 16 × 64 scores as 8 C fragments, its 16 × D output as D/8 C fragments; thread (g = lane/4,
// t = lane%4) holds rows g and g+8 of each fragment. The score fragments of two adjacent 8-key
// n-tiles are exactly the A fragment of a 16-key k-step of P·V (after rounding to T), so P never
// leaves registers. K is read with ldmatrix (it is the col-major B of Q·Kᵀ as stored), V with
// ldmatrix.trans. Shared tiles are rows of D elements whose 16-byte chunks are XOR-swizzled by
// (row & 7), so the 8 row addresses of an ldmatrix hit 8 different bank groups.
//
// Softmax: s = q·k · scale · log2(e) (f32), running row max m and sum l (each thread sums its own
// columns; the 4 threads of a row add theirs at the end), p = exp2(s − m), O rescaled by
// exp2(m_old − m_new) when the max grows; out = O / l, rounded to T once. Keys above the diagonal
// are −inf (only tiles that reach past a warp's first row are masked; 16-key pairs wholly above a
// warp's last row are skipped). Rows past n and keys past the block's last query are zero-filled
// by cp.async and never written / always masked.
//
// Launch: grid = (hq, ceil(n / BM), 1) — blockIdx.y counts from the LAST query tile, so the longest
//   blocks start first and all heads of one tile run together (GQA heads share K/V in L2);
//   block = 32 * WARPS; dynamic shared memory = (BM + 4 * 64) * D * 2 bytes
//   (D = 128: 80 KiB for WARPS = 4, 96 KiB for WARPS = 8; the host opts in above 48 KiB).
// Constraints: D in {64, 128}; q/k/v 16-byte aligned (D * 2 bytes per row); sm_80 or newer (the
//   host falls back to the cuBLAS path below that; on older targets the body is compiled out).

#define FA_BN 64

// The tensor-core helpers (fa_cp_async16, fa_ldsm_x4*, fa_mma, fa_pack, fa_sw, fa_exp2) are in common.cuh
// (decode.cu's decode_attn_mma uses them too).

template <typename T, int D, int WARPS>
__device__ __forceinline__ void prefill_attn_impl(const T* __restrict__ q, const T* __restrict__ k,
                                                  const T* __restrict__ v, T* __restrict__ out, int n, int hq,
                                                  int hkv, int max_len, float scale) {
#if __CUDA_ARCH__ >= 800
    static_assert(D == 64 || D == 128, "prefill_attn: head_dim 64 or 128");
    constexpr int BM = 16 * WARPS;
    constexpr int THREADS = 32 * WARPS;
    constexpr int CPR = D / 8;  // 16-byte chunks per row
    constexpr int KS = D / 16;  // k-steps of Q·Kᵀ
    constexpr int NT = FA_BN / 8;  // 8-key n-tiles per K tile
    constexpr int DT = D / 8;  // 8-column n-tiles of O
    extern __shared__ __align__(16) unsigned char fa_smem[];
    T* qs = reinterpret_cast<T*>(fa_smem);  // BM × D
    T* ks = qs + BM * D;                    // 2 stages × FA_BN × D
    T* vs = ks + 2 * FA_BN * D;             // 2 stages × FA_BN × D

    const int h = blockIdx.x;
    const int mt = gridDim.y - 1 - blockIdx.y;
    const int m0 = mt * BM;
    const int g = h / (hq / hkv);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const T* qh = q + (long long)h * n * D;
    const T* kh = k + (long long)g * max_len * D;
    const T* vh = v + (long long)g * max_len * D;
    // Keys this block needs: 0 .. kv_end - 1 (its last query's).
    const int kv_end = min(m0 + BM, n);
    const int n_tiles = (kv_end + FA_BN - 1) / FA_BN;

    for (int c = tid; c < BM * CPR; c += THREADS) {
        const int r = c / CPR, ch = c % CPR;
        const bool live = m0 + r < n;
        fa_cp_async16(qs + fa_sw<D>(r, ch), qh + (long long)(live ? m0 + r : 0) * D + ch * 8, live);
    }
    auto load_kv = [&](int t, int stage) {
        const int n0 = t * FA_BN;
        T* kd = ks + stage * FA_BN * D;
        T* vd = vs + stage * FA_BN * D;
        for (int c = tid; c < FA_BN * CPR; c += THREADS) {
            const int r = c / CPR, ch = c % CPR;
            const bool live = n0 + r < kv_end;
            const long long off = (long long)(live ? n0 + r : 0) * D + ch * 8;
            fa_cp_async16(kd + fa_sw<D>(r, ch), kh + off, live);
            fa_cp_async16(vd + fa_sw<D>(r, ch), vh + off, live);
        }
    };
    load_kv(0, 0);
    fa_commit();  // group 0: Q and K/V tile 0

    const float sl2 = scale * 1.4426950408889634f;  // scale · log2(e): softmax in base 2
    const int row0 = m0 + warp * 16;            // this warp's first query
    const int r_lo = row0 + (lane >> 2);        // the thread's rows: r_lo and r_lo + 8
    unsigned qf[KS][4];
    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m_run[2] = {NEG_INF, NEG_INF}, l_run[2] = {0.0f, 0.0f};

    for (int t = 0; t < n_tiles; ++t) {
        if (t + 1 < n_tiles) load_kv(t + 1, (t + 1) & 1);
        fa_commit();  // (possibly empty) group t + 1
        fa_wait<1>();  // groups 0..t have landed (this thread's copies)
        __syncthreads();  // ... and every thread's
        if (t == 0) {
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
                const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                fa_ldsm_x4(qf[kk], qs + fa_sw<D>(r, kk * 2 + (lane >> 4)));
            }
        }
        const T* kb = ks + (t & 1) * FA_BN * D;
        const T* vb = vs + (t & 1) * FA_BN * D;
        const int n0 = t * FA_BN;
        // 16-key pairs this warp needs: those with a key <= its last row (row0 + 15).
        const int reach = row0 + 15 - n0;
        const int pairs = reach < 0 ? 0 : min(NT / 2, reach / 16 + 1);
        if (pairs > 0) {  // warp-uniform
            float s[NT][4];
#pragma unroll
            for (int i = 0; i < NT; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
                for (int p = 0; p < NT / 2; ++p) {
                    if (p < pairs) {
                        unsigned b[4];
                        const int r = p * 16 + (lane & 7) + (lane >> 4) * 8;
                        fa_ldsm_x4(b, kb + fa_sw<D>(r, kk * 2 + ((lane >> 3) & 1)));
                        fa_mma<T>(s[2 * p], qf[kk], b[0], b[1]);
                        fa_mma<T>(s[2 * p + 1], qf[kk], b[2], b[3]);
                    }
                }
            }
            // Scale, mask (only where a key may pass the warp's first row), row max.
            const bool mask = n0 + FA_BN - 1 > row0;
            float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = n0 + nt * 8 + 2 * (lane & 3) + (e & 1);
                    const int row = r_lo + (e >> 1) * 8;
                    float x = s[nt][e] * sl2;
                    if (nt >= 2 * pairs || (mask && key > row)) x = NEG_INF;
                    s[nt][e] = x;
                    mx[e >> 1] = fmaxf(mx[e >> 1], x);
                }
            }
            float corr[2], base[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                const float m_new = fmaxf(m_run[r], mx[r]);
                // A row with every key so far masked (only rows past n can be) keeps zeros.
                base[r] = m_new == NEG_INF ? 0.0f : m_new;
                corr[r] = exp2f(m_run[r] - base[r]);  // m_run = -inf gives 0
                m_run[r] = m_new;
            }
            float sum[2] = {0.0f, 0.0f};
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float p = exp2f(s[nt][e] - base[e >> 1]);  // -inf gives 0
                    s[nt][e] = p;
                    sum[e >> 1] += p;
                }
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) l_run[r] = fmaf(l_run[r], corr[r], sum[r]);
#pragma unroll
            for (int i = 0; i < DT; ++i) {
                o[i][0] *= corr[0];
                o[i][1] *= corr[0];
                o[i][2] *= corr[1];
                o[i][3] *= corr[1];
            }
            // O += P · V over the 16-key k-steps this warp needs.
#pragma unroll
            for (int kk = 0; kk < NT / 2; ++kk) {
                if (kk < pairs) {
                    const unsigned a[4] = {fa_pack<T>(s[2 * kk][0], s[2 * kk][1]), fa_pack<T>(s[2 * kk][2], s[2 * kk][3]),
                                           fa_pack<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                           fa_pack<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
                    for (int dp = 0; dp < DT / 2; ++dp) {
                        unsigned b[4];
                        const int r = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                        fa_ldsm_x4_trans(b, vb + fa_sw<D>(r, dp * 2 + (lane >> 4)));
                        fa_mma<T>(o[2 * dp], a, b[0], b[1]);
                        fa_mma<T>(o[2 * dp + 1], a, b[2], b[3]);
                    }
                }
            }
        }
        __syncthreads();  // this stage is reloaded by the next iteration's copies
    }

    // The 4 threads of a row hold partial sums of its columns.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
    }
    const float inv[2] = {l_run[0] > 0.0f ? 1.0f / l_run[0] : 0.0f, l_run[1] > 0.0f ? 1.0f / l_run[1] : 0.0f};
    const long long ld = (long long)hq * D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = r_lo + r * 8;
        if (row < n) {
            T* dst = out + (long long)row * ld + (long long)h * D + 2 * (lane & 3);
#pragma unroll
            for (int i = 0; i < DT; ++i) {
                *reinterpret_cast<unsigned*>(dst + i * 8) = fa_pack<T>(o[i][2 * r] * inv[r], o[i][2 * r + 1] * inv[r]);
            }
        }
    }
#else
    __trap();  // the host never launches it below sm_80
#endif
}

// ---------------------------------------------------------------------------------------------
// Variant with MT m16 tiles per warp (prefill_attn_mt_impl; kernels prefill_attn_d{64,128}_w4m2{,s3}_T).
//
// A warp owns MT * 16 query rows (BM = 16 * MT * WARPS), so every K fragment of Q·Kᵀ and every V
// fragment of P·V that a lane fetches with ldmatrix feeds 2 * MT mma instead of 2 (the shared-memory
// traffic per mma of the kernel above, whose warps own 16 rows, is MT times this one's for K/V). The
// O accumulators (MT × D/8 C fragments: 128 f32 for MT = 2, D = 128) and the scores (MT × 8 C
// fragments) stay in registers; Q does not: it stays in shared memory for the whole block and its
// A fragments are fetched with ldmatrix at each k-step of Q·Kᵀ (MT ldmatrix.x4 per k-step), as
// FlashAttention-2 does. m-tile mi of warp w holds block rows w·16·MT + mi·16 .. + 15, thread
// (g, t) rows g and g + 8 of each, as in the kernel above.
//
// Causal: `pairs` (16-key pairs the warp computes in a K tile) is warp-uniform, from the warp's LAST
// row (row0 + 16·MT − 1); pairs above an m-tile's own rows are computed for the lower tiles too and
// masked element-wise (key > row, each element with its own m-tile's row). Masking applies to tiles
// with a key past the warp's first row.
//
// K/V pipeline: STAGES shared stages, one __syncthreads per K tile: at tile t, wait for tile t's
// group, barrier (every thread's copies landed and every warp finished tile t − 1), then issue tile
// t + STAGES − 1 into the stage tile t − 1 used, then compute tile t.
//
// Launch: grid = (hq, ceil(n / BM), 1) with blockIdx.y from the last query tile (as above);
//   block = 32 * WARPS; dynamic shared memory = (BM + 2 * STAGES * 64) * D * 2 bytes (D = 128, BM =
//   128: 96 KiB with 2 stages, two blocks per SM; 128 KiB with 3 stages).
template <typename T, int D, int WARPS, int MT, int STAGES>
__device__ __forceinline__ void prefill_attn_mt_impl(const T* __restrict__ q, const T* __restrict__ k,
                                                     const T* __restrict__ v, T* __restrict__ out, int n, int hq,
                                                     int hkv, int max_len, float scale) {
#if __CUDA_ARCH__ >= 800
    static_assert(D == 64 || D == 128, "prefill_attn: head_dim 64 or 128");
    static_assert(STAGES >= 2, "prefill_attn: two stages or more");
    constexpr int WROWS = 16 * MT;  // query rows per warp
    constexpr int BM = WROWS * WARPS;
    constexpr int THREADS = 32 * WARPS;
    constexpr int CPR = D / 8;  // 16-byte chunks per row
    constexpr int KS = D / 16;  // k-steps of Q·Kᵀ
    constexpr int NT = FA_BN / 8;  // 8-key n-tiles per K tile
    constexpr int DT = D / 8;  // 8-column n-tiles of O
    extern __shared__ __align__(16) unsigned char fa_smem[];
    T* qs = reinterpret_cast<T*>(fa_smem);  // BM × D
    T* ks = qs + BM * D;                    // STAGES × FA_BN × D
    T* vs = ks + STAGES * FA_BN * D;        // STAGES × FA_BN × D

    const int h = blockIdx.x;
    const int mtile = gridDim.y - 1 - blockIdx.y;
    const int m0 = mtile * BM;
    const int g = h / (hq / hkv);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const T* qh = q + (long long)h * n * D;
    const T* kh = k + (long long)g * max_len * D;
    const T* vh = v + (long long)g * max_len * D;
    // Keys this block needs: 0 .. kv_end - 1 (its last query's).
    const int kv_end = min(m0 + BM, n);
    const int n_tiles = (kv_end + FA_BN - 1) / FA_BN;

    // Copies: thread tid moves chunk tid % CPR of rows tid / CPR + i · RPR (RPR rows per round, a
    // multiple of 8, so the swizzle (row & 7) and the shared offset's chunk part are the same each round).
    constexpr int RPR = THREADS / CPR;
    static_assert(RPR % 8 == 0 && BM % RPR == 0 && FA_BN % RPR == 0, "prefill_attn: whole copy rounds");
    const int c_row = tid / CPR, c_ch = tid % CPR;
    const int c_sw = fa_sw<D>(c_row, c_ch);  // + i · RPR · D in round i
#pragma unroll
    for (int i = 0; i < BM / RPR; ++i) {
        const int r = c_row + i * RPR;
        const bool live = m0 + r < n;
        fa_cp_async16(qs + c_sw + i * RPR * D, qh + (live ? (m0 + r) * D : 0) + c_ch * 8, live);
    }
    // Element offset of (row, chunk) within a head's cache fits an int: max_len · D < 2^31 (host-checked).
    const T* kc = kh + c_ch * 8;
    const T* vc = vh + c_ch * 8;
    auto load_kv = [&](int t, int stage) {
        const int n0 = t * FA_BN;
        T* kd = ks + stage * FA_BN * D + c_sw;
        T* vd = vs + stage * FA_BN * D + c_sw;
#pragma unroll
        for (int i = 0; i < FA_BN / RPR; ++i) {
            const int r = n0 + c_row + i * RPR;
            const bool live = r < kv_end;
            const int off = live ? r * D : 0;
            fa_cp_async16(kd + i * RPR * D, kc + off, live);
            fa_cp_async16(vd + i * RPR * D, vc + off, live);
        }
    };
    // Prologue: groups 0 .. STAGES - 2 (group 0 also holds Q), possibly empty.
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < n_tiles) load_kv(st, st);
        fa_commit();
    }

    const float sl2 = scale * 1.4426950408889634f;  // scale · log2(e): softmax in base 2
    const int row0 = m0 + warp * WROWS;           // this warp's first query
    const int r_lo = row0 + (lane >> 2);          // the thread's rows: r_lo + 16 mi and r_lo + 16 mi + 8
    // ldmatrix addresses: with rows of 2·D bytes and the 16-byte chunk c of row r at chunk c ^ (r & 7),
    // the byte offset of chunk 2·kk + c0 (c0 = 0 or 1) of row r is (r·2D + ((c0 ^ (r & 7)) << 4)) ^
    // (kk << 5): 2·kk + c0 = 2·kk ^ c0, and kk << 5 stays below bit log2(2D). Each lane keeps the
    // offset for kk = 0; a k-step is one XOR, and a step of 16 rows an immediate (+ 32·D bytes).
    const unsigned q_sm = (unsigned)__cvta_generic_to_shared(qs);
    const unsigned k_sm = (unsigned)__cvta_generic_to_shared(ks);
    const unsigned v_sm = (unsigned)__cvta_generic_to_shared(vs);
    // Q (A fragments, m-tile mi at + mi·16 rows): matrices rows 0-7 / 8-15 of k-columns 0-7, then 8-15.
    const unsigned q_off = (unsigned)(warp * WROWS + (lane & 7) + ((lane >> 3) & 1) * 8) * (2 * D) +
                           ((((lane >> 4) ^ lane) & 7) << 4);
    // K (B of Q·Kᵀ, pair p at + p·16 rows): keys 0-7 / k-columns 0-7, keys 0-7 / 8-15, keys 8-15 / 0-7, 8-15 / 8-15.
    const unsigned k_off = (unsigned)((lane & 7) + (lane >> 4) * 8) * (2 * D) + (((((lane >> 3) & 1)) ^ (lane & 7)) << 4);
    // V (B of P·V via .trans, k-step kk at + kk·16 rows, columns dp·16 via dp << 5): keys 0-7 / 8-15 of
    // columns 0-7, then of columns 8-15.
    const unsigned v_off = (unsigned)((lane & 7) + ((lane >> 3) & 1) * 8) * (2 * D) + ((((lane >> 4)) ^ (lane & 7)) << 4);
    float o[MT][DT][4];
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int i = 0; i < DT; ++i) o[mi][i][0] = o[mi][i][1] = o[mi][i][2] = o[mi][i][3] = 0.0f;
    float m_run[MT][2], l_run[MT][2];
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) m_run[mi][0] = m_run[mi][1] = NEG_INF, l_run[mi][0] = l_run[mi][1] = 0.0f;

    for (int t = 0; t < n_tiles; ++t) {
        fa_wait<STAGES - 2>();  // groups 0..t have landed (this thread's copies)
        __syncthreads();  // ... and every thread's; every warp is done with tile t - 1's stage
        if (t + STAGES - 1 < n_tiles) load_kv(t + STAGES - 1, (t + STAGES - 1) % STAGES);
        fa_commit();  // (possibly empty) group t + STAGES - 1
        const unsigned kb = k_sm + (t % STAGES) * (FA_BN * D * 2);
        const unsigned vb = v_sm + (t % STAGES) * (FA_BN * D * 2);
        const int n0 = t * FA_BN;
        // 16-key pairs this warp needs: those with a key <= its last row (row0 + WROWS - 1).
        const int reach = row0 + WROWS - 1 - n0;
        const int pairs = reach < 0 ? 0 : min(NT / 2, reach / 16 + 1);
        if (pairs > 0) {  // warp-uniform
            float s[MT][NT][4];
#pragma unroll
            for (int mi = 0; mi < MT; ++mi)
#pragma unroll
                for (int i = 0; i < NT; ++i) s[mi][i][0] = s[mi][i][1] = s[mi][i][2] = s[mi][i][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
                unsigned qf[MT][4];
#pragma unroll
                for (int mi = 0; mi < MT; ++mi) fa_ldsm_x4_a(qf[mi], q_sm + (q_off ^ (kk << 5)) + mi * 16 * 2 * D);
                const unsigned ka = kb + (k_off ^ (kk << 5));
#pragma unroll
                for (int p = 0; p < NT / 2; ++p) {
                    if (p < pairs) {
                        unsigned b[4];
                        fa_ldsm_x4_a(b, ka + p * 16 * 2 * D);
#pragma unroll
                        for (int mi = 0; mi < MT; ++mi) {
                            fa_mma<T>(s[mi][2 * p], qf[mi], b[0], b[1]);
                            fa_mma<T>(s[mi][2 * p + 1], qf[mi], b[2], b[3]);
                        }
                    }
                }
            }
            // Mask (only where a key may pass the warp's first row), row max of the raw scores (scale > 0).
            const bool mask = n0 + FA_BN - 1 > row0;
            float mx[MT][2];
#pragma unroll
            for (int mi = 0; mi < MT; ++mi) {
                mx[mi][0] = mx[mi][1] = NEG_INF;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int key = n0 + nt * 8 + 2 * (lane & 3) + (e & 1);
                        const int row = r_lo + mi * 16 + (e >> 1) * 8;
                        if (nt >= 2 * pairs || (mask && key > row)) s[mi][nt][e] = NEG_INF;
                        mx[mi][e >> 1] = fmaxf(mx[mi][e >> 1], s[mi][nt][e]);
                    }
                }
            }
#pragma unroll
            for (int mi = 0; mi < MT; ++mi) {
                float corr[2], base[2];
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    float m = fmaxf(mx[mi][r], __shfl_xor_sync(0xffffffffu, mx[mi][r], 1));
                    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
                    const float m_new = fmaxf(m_run[mi][r], m * sl2);
                    // A row with every key so far masked (only rows past n can be) keeps zeros.
                    base[r] = m_new == NEG_INF ? 0.0f : m_new;
                    corr[r] = fa_exp2(m_run[mi][r] - base[r]);  // m_run = -inf gives 0
                    m_run[mi][r] = m_new;
                }
                float sum[2] = {0.0f, 0.0f};
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float p = fa_exp2(fmaf(s[mi][nt][e], sl2, -base[e >> 1]));  // -inf gives 0
                        s[mi][nt][e] = p;
                        sum[e >> 1] += p;
                    }
                }
#pragma unroll
                for (int r = 0; r < 2; ++r) l_run[mi][r] = fmaf(l_run[mi][r], corr[r], sum[r]);
#pragma unroll
                for (int i = 0; i < DT; ++i) {
                    o[mi][i][0] *= corr[0];
                    o[mi][i][1] *= corr[0];
                    o[mi][i][2] *= corr[1];
                    o[mi][i][3] *= corr[1];
                }
            }
            // O += P · V over the 16-key k-steps this warp needs; each V fragment feeds 2 · MT mma.
#pragma unroll
            for (int kk = 0; kk < NT / 2; ++kk) {
                if (kk < pairs) {
                    unsigned a[MT][4];
#pragma unroll
                    for (int mi = 0; mi < MT; ++mi) {
                        a[mi][0] = fa_pack<T>(s[mi][2 * kk][0], s[mi][2 * kk][1]);
                        a[mi][1] = fa_pack<T>(s[mi][2 * kk][2], s[mi][2 * kk][3]);
                        a[mi][2] = fa_pack<T>(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
                        a[mi][3] = fa_pack<T>(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
                    }
#pragma unroll
                    for (int dp = 0; dp < DT / 2; ++dp) {
                        unsigned b[4];
                        fa_ldsm_x4_trans_a(b, vb + (v_off ^ (dp << 5)) + kk * 16 * 2 * D);
#pragma unroll
                        for (int mi = 0; mi < MT; ++mi) {
                            fa_mma<T>(o[mi][2 * dp], a[mi], b[0], b[1]);
                            fa_mma<T>(o[mi][2 * dp + 1], a[mi], b[2], b[3]);
                        }
                    }
                }
            }
        }
    }
    fa_wait<0>();  // no copy in flight at exit (the trailing groups are empty)

    const long long ld = (long long)hq * D;
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) {
        // The 4 threads of a row hold partial sums of its columns.
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float l = l_run[mi][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const float inv = l > 0.0f ? 1.0f / l : 0.0f;
            const int row = r_lo + mi * 16 + r * 8;
            if (row < n) {
                T* dst = out + (long long)row * ld + (long long)h * D + 2 * (lane & 3);
#pragma unroll
                for (int i = 0; i < DT; ++i) {
                    *reinterpret_cast<unsigned*>(dst + i * 8) = fa_pack<T>(o[mi][i][2 * r] * inv, o[mi][i][2 * r + 1] * inv);
                }
            }
        }
    }
#else
    __trap();  // the host never launches it below sm_80
#endif
}

extern "C" __global__ void __launch_bounds__(128, 1) prefill_attn_d64_w4_f16(const __half* q, const __half* k, const __half* v,
                                                                          __half* out, int n, int hq, int hkv, int max_len,
                                                                          float scale) {
    pdl_wait();
    prefill_attn_impl<__half, 64, 4>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(128, 1) prefill_attn_d64_w4_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                                                           const __nv_bfloat16* v, __nv_bfloat16* out, int n,
                                                                           int hq, int hkv, int max_len, float scale) {
    pdl_wait();
    prefill_attn_impl<__nv_bfloat16, 64, 4>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(128, 1) prefill_attn_d128_w4_f16(const __half* q, const __half* k, const __half* v,
                                                                           __half* out, int n, int hq, int hkv, int max_len,
                                                                           float scale) {
    pdl_wait();
    prefill_attn_impl<__half, 128, 4>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(128, 1) prefill_attn_d128_w4_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                                                            const __nv_bfloat16* v, __nv_bfloat16* out, int n,
                                                                            int hq, int hkv, int max_len, float scale) {
    pdl_wait();
    prefill_attn_impl<__nv_bfloat16, 128, 4>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(256, 1) prefill_attn_d64_w8_f16(const __half* q, const __half* k, const __half* v,
                                                                          __half* out, int n, int hq, int hkv, int max_len,
                                                                          float scale) {
    pdl_wait();
    prefill_attn_impl<__half, 64, 8>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(256, 1) prefill_attn_d64_w8_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                                                           const __nv_bfloat16* v, __nv_bfloat16* out, int n,
                                                                           int hq, int hkv, int max_len, float scale) {
    pdl_wait();
    prefill_attn_impl<__nv_bfloat16, 64, 8>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(256, 1) prefill_attn_d128_w8_f16(const __half* q, const __half* k, const __half* v,
                                                                           __half* out, int n, int hq, int hkv, int max_len,
                                                                           float scale) {
    pdl_wait();
    prefill_attn_impl<__half, 128, 8>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(256, 1) prefill_attn_d128_w8_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                                                            const __nv_bfloat16* v, __nv_bfloat16* out, int n,
                                                                            int hq, int hkv, int max_len, float scale) {
    pdl_wait();
    prefill_attn_impl<__nv_bfloat16, 128, 8>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(128) prefill_attn_d64_w4m2_f16(const __half* q, const __half* k, const __half* v,
                                                                     __half* out, int n, int hq, int hkv, int max_len, float scale) {
    pdl_wait();
    prefill_attn_mt_impl<__half, 64, 4, 2, 2>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(128) prefill_attn_d64_w4m2_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                                                     __nv_bfloat16* out, int n, int hq, int hkv, int max_len, float scale) {
    pdl_wait();
    prefill_attn_mt_impl<__nv_bfloat16, 64, 4, 2, 2>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(128) prefill_attn_d64_w4m2s3_f16(const __half* q, const __half* k, const __half* v,
                                                                     __half* out, int n, int hq, int hkv, int max_len, float scale) {
    pdl_wait();
    prefill_attn_mt_impl<__half, 64, 4, 2, 3>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(128) prefill_attn_d64_w4m2s3_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                                                     __nv_bfloat16* out, int n, int hq, int hkv, int max_len, float scale) {
    pdl_wait();
    prefill_attn_mt_impl<__nv_bfloat16, 64, 4, 2, 3>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(128) prefill_attn_d128_w4m2_f16(const __half* q, const __half* k, const __half* v,
                                                                     __half* out, int n, int hq, int hkv, int max_len, float scale) {
    pdl_wait();
    prefill_attn_mt_impl<__half, 128, 4, 2, 2>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(128) prefill_attn_d128_w4m2_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                                                     __nv_bfloat16* out, int n, int hq, int hkv, int max_len, float scale) {
    pdl_wait();
    prefill_attn_mt_impl<__nv_bfloat16, 128, 4, 2, 2>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(128) prefill_attn_d128_w4m2s3_f16(const __half* q, const __half* k, const __half* v,
                                                                     __half* out, int n, int hq, int hkv, int max_len, float scale) {
    pdl_wait();
    prefill_attn_mt_impl<__half, 128, 4, 2, 3>(q, k, v, out, n, hq, hkv, max_len, scale);
}
extern "C" __global__ void __launch_bounds__(128) prefill_attn_d128_w4m2s3_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                                                     __nv_bfloat16* out, int n, int hq, int hkv, int max_len, float scale) {
    pdl_wait();
    prefill_attn_mt_impl<__nv_bfloat16, 128, 4, 2, 3>(q, k, v, out, n, hq, hkv, max_len, scale);
}
