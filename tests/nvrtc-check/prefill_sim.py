#!/usr/bin/env python3
"""Host mirror of prefill.cu's data movement (no GPU needed): the swizzled shared-memory tiles, what
each lane's ldmatrix / ldmatrix.trans addresses fetch, the mma.sync m16n8k16 fragment layouts (PTX
ISA, "Matrix Fragments for mma.m16n8k16"), the masking, the pair skipping and the online softmax,
lane by lane, checked against plain causal GQA attention. It catches index mistakes in the kernel's
fragment arithmetic; rounding is modelled (fp16 inputs and P, f32 accumulation) but not bit-exactly.

usage: python3 tests/nvrtc-check/prefill_sim.py   (needs numpy; exits non-zero on a mismatch)
"""
import sys

import numpy as np

FA_BN = 64


def sw(D, row, chunk):
    return row * D + ((chunk ^ (row & 7)) << 3)


def ldsm(smem, addrs, trans):
    """ldmatrix .x4: addrs[l] = element offset of row (l % 8) of matrix (l // 8). Returns r[lane][i] =
    (lo, hi) of matrix i as thread `lane` receives it."""
    mats = [np.stack([smem[addrs[8 * i + r]: addrs[8 * i + r] + 8] for r in range(8)]) for i in range(4)]
    out = []
    for t in range(32):
        regs = []
        for m in mats:
            if trans:
                regs.append((m[2 * (t % 4), t // 4], m[2 * (t % 4) + 1, t // 4]))
            else:
                regs.append((m[t // 4, 2 * (t % 4)], m[t // 4, 2 * (t % 4) + 1]))
        out.append(regs)
    return out


def mma(c, a, b0, b1):
    """c[lane] (4 floats) += A (16x16 from a[lane][4 regs]) @ B (16x8 from b0[lane], b1[lane])."""
    A = np.zeros((16, 16), np.float32)
    B = np.zeros((16, 8), np.float32)
    for l in range(32):
        g, t = l // 4, l % 4
        for j, (r, k) in enumerate([(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)]):
            A[r, k], A[r, k + 1] = a[l][j]
        B[2 * t, g], B[2 * t + 1, g] = b0[l]
        B[2 * t + 8, g], B[2 * t + 9, g] = b1[l]
    C = A @ B
    for l in range(32):
        g, t = l // 4, l % 4
        c[l][0] += C[g, 2 * t]
        c[l][1] += C[g, 2 * t + 1]
        c[l][2] += C[g + 8, 2 * t]
        c[l][3] += C[g + 8, 2 * t + 1]


def h(x):
    return np.float32(np.float16(x))


def block(q, k, v, out, n, hq, hkv, max_len, D, WARPS, hidx, mt):
    BM = 16 * WARPS
    KS, NT, DT = D // 16, FA_BN // 8, D // 8
    m0 = mt * BM
    g = hidx // (hq // hkv)
    kv_end = min(m0 + BM, n)
    n_tiles = (kv_end + FA_BN - 1) // FA_BN
    qs = np.zeros(BM * D, np.float32)
    for r in range(BM):
        for ch in range(D // 8):
            if m0 + r < n:
                qs[sw(D, r, ch): sw(D, r, ch) + 8] = q[hidx, m0 + r, ch * 8: ch * 8 + 8]
    sl2 = np.float32(1 / np.sqrt(D) * 1.4426950408889634)
    for warp in range(WARPS):
        row0 = m0 + warp * 16
        qf = [ldsm(qs, [sw(D, warp * 16 + (l & 7) + ((l >> 3) & 1) * 8, kk * 2 + (l >> 4)) for l in range(32)], False)
              for kk in range(KS)]
        o = [[[0.0] * 4 for _ in range(DT)] for _ in range(32)]
        m_run = [[-np.inf, -np.inf] for _ in range(32)]
        l_run = [[0.0, 0.0] for _ in range(32)]
        for t in range(n_tiles):
            n0 = t * FA_BN
            kb = np.zeros(FA_BN * D, np.float32)
            vb = np.zeros(FA_BN * D, np.float32)
            for r in range(FA_BN):
                if n0 + r < kv_end:
                    for ch in range(D // 8):
                        kb[sw(D, r, ch): sw(D, r, ch) + 8] = k[g, n0 + r, ch * 8: ch * 8 + 8]
                        vb[sw(D, r, ch): sw(D, r, ch) + 8] = v[g, n0 + r, ch * 8: ch * 8 + 8]
            reach = row0 + 15 - n0
            pairs = 0 if reach < 0 else min(NT // 2, reach // 16 + 1)
            if pairs == 0:
                continue
            s = [[[0.0] * 4 for _ in range(NT)] for _ in range(32)]
            for kk in range(KS):
                for p in range(pairs):
                    b = ldsm(kb, [sw(D, p * 16 + (l & 7) + (l >> 4) * 8, kk * 2 + ((l >> 3) & 1)) for l in range(32)], False)
                    a = [qf[kk][l] for l in range(32)]
                    s0 = [s[l][2 * p] for l in range(32)]
                    s1 = [s[l][2 * p + 1] for l in range(32)]
                    mma(s0, a, [b[l][0] for l in range(32)], [b[l][1] for l in range(32)])
                    mma(s1, a, [b[l][2] for l in range(32)], [b[l][3] for l in range(32)])
            mask = n0 + FA_BN - 1 > row0
            mx = [[-np.inf, -np.inf] for _ in range(32)]
            for l in range(32):
                r_lo = row0 + (l >> 2)
                for nt in range(NT):
                    for e in range(4):
                        key = n0 + nt * 8 + 2 * (l & 3) + (e & 1)
                        row = r_lo + (e >> 1) * 8
                        x = np.float32(s[l][nt][e]) * sl2
                        if nt >= 2 * pairs or (mask and key > row):
                            x = -np.inf
                        s[l][nt][e] = x
                        mx[l][e >> 1] = max(mx[l][e >> 1], x)
            # Row max over the 4 lanes of a quad (the kernel's shuffles xor 1, xor 2).
            mx = [[max(mx[(l & ~3) + i][r] for i in range(4)) for r in range(2)] for l in range(32)]
            for l in range(32):
                corr, base = [0, 0], [0, 0]
                for r in range(2):
                    m_new = max(m_run[l][r], mx[l][r])
                    base[r] = 0.0 if m_new == -np.inf else m_new
                    corr[r] = 2.0 ** (m_run[l][r] - base[r])
                    m_run[l][r] = m_new
                sm = [0.0, 0.0]
                for nt in range(NT):
                    for e in range(4):
                        p_ = 2.0 ** (s[l][nt][e] - base[e >> 1])
                        s[l][nt][e] = p_
                        sm[e >> 1] += p_
                for r in range(2):
                    l_run[l][r] = l_run[l][r] * corr[r] + sm[r]
                for i in range(DT):
                    o[l][i][0] *= corr[0]
                    o[l][i][1] *= corr[0]
                    o[l][i][2] *= corr[1]
                    o[l][i][3] *= corr[1]
            for kk in range(pairs):
                a = [[(h(s[l][2 * kk][0]), h(s[l][2 * kk][1])), (h(s[l][2 * kk][2]), h(s[l][2 * kk][3])),
                      (h(s[l][2 * kk + 1][0]), h(s[l][2 * kk + 1][1])), (h(s[l][2 * kk + 1][2]), h(s[l][2 * kk + 1][3]))]
                     for l in range(32)]
                for dp in range(DT // 2):
                    b = ldsm(vb, [sw(D, kk * 16 + (l & 7) + ((l >> 3) & 1) * 8, dp * 2 + (l >> 4)) for l in range(32)], True)
                    o0 = [o[l][2 * dp] for l in range(32)]
                    o1 = [o[l][2 * dp + 1] for l in range(32)]
                    mma(o0, a, [b[l][0] for l in range(32)], [b[l][1] for l in range(32)])
                    mma(o1, a, [b[l][2] for l in range(32)], [b[l][3] for l in range(32)])
        lsum = [[sum(l_run[(l & ~3) + i][r] for i in range(4)) for r in range(2)] for l in range(32)]
        for l in range(32):
            for r in range(2):
                row = row0 + (l >> 2) + r * 8
                if row < n:
                    inv = 1.0 / lsum[l][r] if lsum[l][r] > 0 else 0.0
                    for i in range(DT):
                        c = i * 8 + 2 * (l & 3)
                        out[row, hidx, c] = o[l][i][2 * r] * inv
                        out[row, hidx, c + 1] = o[l][i][2 * r + 1] * inv


def block_mt(q, k, v, out, n, hq, hkv, max_len, D, WARPS, MT, hidx, mt):
    """prefill_attn_mt_impl: MT m16 tiles per warp, Q fragments fetched from shared memory per k-step
    with the XOR-ed byte offsets of the kernel, each K / V fragment shared by the MT m-tiles."""
    WROWS = 16 * MT
    BM = WROWS * WARPS
    THREADS = 32 * WARPS
    KS, NT, DT, CPR = D // 16, FA_BN // 8, D // 8, D // 8
    RPR = THREADS // CPR
    m0 = mt * BM
    g = hidx // (hq // hkv)
    kv_end = min(m0 + BM, n)
    n_tiles = (kv_end + FA_BN - 1) // FA_BN
    # Copies as the kernel issues them (c_sw + i·RPR·D, zero-fill where not live).
    qs = np.full(BM * D, np.nan, np.float32)
    for tid in range(THREADS):
        c_row, c_ch = tid // CPR, tid % CPR
        c_sw = sw(D, c_row, c_ch)
        for i in range(BM // RPR):
            r = c_row + i * RPR
            dst = c_sw + i * RPR * D
            assert dst == sw(D, r, c_ch)
            qs[dst: dst + 8] = q[hidx, m0 + r, c_ch * 8: c_ch * 8 + 8] if m0 + r < n else 0.0
    assert not np.isnan(qs).any()

    def load_kv(t):
        n0 = t * FA_BN
        kb = np.full(FA_BN * D, np.nan, np.float32)
        vb = np.full(FA_BN * D, np.nan, np.float32)
        for tid in range(THREADS):
            c_row, c_ch = tid // CPR, tid % CPR
            c_sw = sw(D, c_row, c_ch)
            for i in range(FA_BN // RPR):
                r = n0 + c_row + i * RPR
                dst = c_sw + i * RPR * D
                live = r < kv_end
                kb[dst: dst + 8] = k[g, r, c_ch * 8: c_ch * 8 + 8] if live else 0.0
                vb[dst: dst + 8] = v[g, r, c_ch * 8: c_ch * 8 + 8] if live else 0.0
        assert not np.isnan(kb).any() and not np.isnan(vb).any()
        return kb, vb

    def el(byte_off):  # byte offset in a tile of 2-byte elements → element offset
        assert byte_off % 16 == 0
        return byte_off // 2

    tiles = [load_kv(t) for t in range(n_tiles)]
    sl2 = np.float32(1 / np.sqrt(D) * 1.4426950408889634)
    for warp in range(WARPS):
        row0 = m0 + warp * WROWS
        q_off = [(warp * WROWS + (l & 7) + ((l >> 3) & 1) * 8) * (2 * D) + ((((l >> 4) ^ l) & 7) << 4) for l in range(32)]
        k_off = [((l & 7) + (l >> 4) * 8) * (2 * D) + ((((l >> 3) & 1) ^ (l & 7)) << 4) for l in range(32)]
        v_off = [((l & 7) + ((l >> 3) & 1) * 8) * (2 * D) + (((l >> 4) ^ (l & 7)) << 4) for l in range(32)]
        # The XOR form is the swizzle of (row, chunk) for every k-step.
        for l in range(32):
            for kk in range(KS):
                assert el(q_off[l] ^ (kk << 5)) == sw(D, warp * WROWS + (l & 7) + ((l >> 3) & 1) * 8, kk * 2 + (l >> 4))
                assert el(k_off[l] ^ (kk << 5)) == sw(D, (l & 7) + (l >> 4) * 8, kk * 2 + ((l >> 3) & 1))
            for dp in range(DT // 2):
                assert el(v_off[l] ^ (dp << 5)) == sw(D, (l & 7) + ((l >> 3) & 1) * 8, dp * 2 + (l >> 4))
        o = [[[[0.0] * 4 for _ in range(DT)] for _ in range(32)] for _ in range(MT)]
        m_run = [[[-np.inf, -np.inf] for _ in range(32)] for _ in range(MT)]
        l_run = [[[0.0, 0.0] for _ in range(32)] for _ in range(MT)]
        for t in range(n_tiles):
            n0 = t * FA_BN
            kb, vb = tiles[t]
            reach = row0 + WROWS - 1 - n0
            pairs = 0 if reach < 0 else min(NT // 2, reach // 16 + 1)
            if pairs == 0:
                continue
            s = [[[[0.0] * 4 for _ in range(NT)] for _ in range(32)] for _ in range(MT)]
            for kk in range(KS):
                qf = [ldsm(qs, [el((q_off[l] ^ (kk << 5)) + mi * 16 * 2 * D) for l in range(32)], False) for mi in range(MT)]
                for p in range(pairs):
                    b = ldsm(kb, [el((k_off[l] ^ (kk << 5)) + p * 16 * 2 * D) for l in range(32)], False)
                    for mi in range(MT):
                        s0 = [s[mi][l][2 * p] for l in range(32)]
                        s1 = [s[mi][l][2 * p + 1] for l in range(32)]
                        mma(s0, qf[mi], [b[l][0] for l in range(32)], [b[l][1] for l in range(32)])
                        mma(s1, qf[mi], [b[l][2] for l in range(32)], [b[l][3] for l in range(32)])
            mask = n0 + FA_BN - 1 > row0
            for mi in range(MT):
                mx = [[-np.inf, -np.inf] for _ in range(32)]
                for l in range(32):
                    r_lo = row0 + (l >> 2)
                    for nt in range(NT):
                        for e in range(4):
                            key = n0 + nt * 8 + 2 * (l & 3) + (e & 1)
                            row = r_lo + mi * 16 + (e >> 1) * 8
                            if nt >= 2 * pairs or (mask and key > row):
                                s[mi][l][nt][e] = -np.inf
                            mx[l][e >> 1] = max(mx[l][e >> 1], np.float32(s[mi][l][nt][e]))
                mx = [[max(mx[(l & ~3) + i][r] for i in range(4)) for r in range(2)] for l in range(32)]
                for l in range(32):
                    corr, base = [0, 0], [0, 0]
                    for r in range(2):
                        m_new = max(m_run[mi][l][r], np.float32(mx[l][r] * sl2))
                        base[r] = 0.0 if m_new == -np.inf else m_new
                        corr[r] = 2.0 ** (m_run[mi][l][r] - base[r])
                        m_run[mi][l][r] = m_new
                    sm = [0.0, 0.0]
                    for nt in range(NT):
                        for e in range(4):
                            p_ = 2.0 ** (np.float32(s[mi][l][nt][e]) * sl2 - base[e >> 1])
                            s[mi][l][nt][e] = p_
                            sm[e >> 1] += p_
                    for r in range(2):
                        l_run[mi][l][r] = l_run[mi][l][r] * corr[r] + sm[r]
                    for i in range(DT):
                        o[mi][l][i][0] *= corr[0]
                        o[mi][l][i][1] *= corr[0]
                        o[mi][l][i][2] *= corr[1]
                        o[mi][l][i][3] *= corr[1]
            for kk in range(pairs):
                a = [[[(h(s[mi][l][2 * kk][0]), h(s[mi][l][2 * kk][1])), (h(s[mi][l][2 * kk][2]), h(s[mi][l][2 * kk][3])),
                       (h(s[mi][l][2 * kk + 1][0]), h(s[mi][l][2 * kk + 1][1])),
                       (h(s[mi][l][2 * kk + 1][2]), h(s[mi][l][2 * kk + 1][3]))] for l in range(32)] for mi in range(MT)]
                for dp in range(DT // 2):
                    b = ldsm(vb, [el((v_off[l] ^ (dp << 5)) + kk * 16 * 2 * D) for l in range(32)], True)
                    for mi in range(MT):
                        o0 = [o[mi][l][2 * dp] for l in range(32)]
                        o1 = [o[mi][l][2 * dp + 1] for l in range(32)]
                        mma(o0, a[mi], [b[l][0] for l in range(32)], [b[l][1] for l in range(32)])
                        mma(o1, a[mi], [b[l][2] for l in range(32)], [b[l][3] for l in range(32)])
        for mi in range(MT):
            lsum = [[sum(l_run[mi][(l & ~3) + i][r] for i in range(4)) for r in range(2)] for l in range(32)]
            for l in range(32):
                for r in range(2):
                    row = row0 + (l >> 2) + mi * 16 + r * 8
                    if row < n:
                        inv = 1.0 / lsum[l][r] if lsum[l][r] > 0 else 0.0
                        for i in range(DT):
                            c = i * 8 + 2 * (l & 3)
                            out[row, hidx, c] = o[mi][l][i][2 * r] * inv
                            out[row, hidx, c + 1] = o[mi][l][i][2 * r + 1] * inv


def check(n, hq, hkv, D, WARPS, seed, MT=1):
    rng = np.random.default_rng(seed)
    max_len = n + 5
    q = np.float16(rng.standard_normal((hq, n, D)) * 2).astype(np.float32)
    k = np.float16(rng.standard_normal((hkv, max_len, D))).astype(np.float32)
    v = np.float16(rng.standard_normal((hkv, max_len, D))).astype(np.float32)
    k[:, n:] = np.nan  # the kernel must never read past the prompt
    v[:, n:] = np.nan
    out = np.full((n, hq, D), np.nan, np.float32)
    BM = 16 * MT * WARPS
    for hidx in range(hq):
        for mt in range((n + BM - 1) // BM):
            if MT == 1:
                block(q, k, v, out, n, hq, hkv, max_len, D, WARPS, hidx, mt)
            else:
                block_mt(q, k, v, out, n, hq, hkv, max_len, D, WARPS, MT, hidx, mt)
    ref = np.zeros_like(out)
    for hidx in range(hq):
        g = hidx // (hq // hkv)
        s = q[hidx] @ k[g, :n].T / np.sqrt(D)
        s[np.triu_indices(n, 1)] = -np.inf
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        ref[:, hidx] = p @ v[g, :n]
    err = np.abs(out - ref).max()
    ok = np.isfinite(out).all() and err < 5e-3
    print(f"n={n} hq={hq} hkv={hkv} D={D} warps={WARPS} m-tiles={MT}: max |diff| {err:.2e} {'ok' if ok else 'MISMATCH'}")
    return ok


if __name__ == "__main__":
    ok = True
    for n, hq, hkv, D, W in [(150, 4, 2, 64, 4), (100, 2, 1, 128, 8), (130, 3, 1, 64, 8), (70, 2, 2, 128, 4)]:
        ok &= check(n, hq, hkv, D, W, n)
    # prefill_attn_mt_impl (4 warps × 2 m-tiles, BM = 128): GQA groups 5 and 7, prompts past one and
    # two query tiles and not a multiple of 16, 64 or 128.
    for n, hq, hkv, D in [(150, 5, 1, 64), (203, 7, 1, 128), (45, 10, 2, 128), (290, 2, 1, 64)]:
        ok &= check(n, hq, hkv, D, 4, n, MT=2)
    sys.exit(0 if ok else 1)
