#!/usr/bin/env python3
"""Host mirror of decode.cu's decode_attn_mma (no GPU needed): the copies into swizzled stages as each
thread issues them, q as A fragments straight from global memory (rows past the GQA group zero), the
ldmatrix / ldmatrix.trans fragments of K and V, mma.sync m16n8k16 (prefill_sim's model of the PTX
fragment layouts), the mask past a split's end, the per-warp online softmax in base 2, the warps'
merge through shared memory into (m · ln 2, l, acc) and decode_attn_merge's combine of the splits —
lane by lane, against plain GQA decode attention. Batches with different context lengths, splits
that are empty, partial or a single position.

usage: python3 tests/nvrtc-check/decode_sim.py   (needs numpy; exits non-zero on a mismatch)
"""
import sys

import numpy as np

from prefill_sim import h, ldsm, mma, sw

import re
from pathlib import Path

# The kernel's own constants, read from its source (the mirror follows a change of them).
_SRC = (Path(__file__).resolve().parents[2] / "src/engine/builtin/cuda/kernels/decode.cu").read_text()
MM_WARPS = int(re.search(r"^#define MM_WARPS (\d+)$", _SRC, re.M).group(1))
MM_STAGES = int(re.search(r"^#define MM_STAGES (\d+)$", _SRC, re.M).group(1))
assert re.search(r"^#define MM_TILE \(16 \* MM_WARPS\)$", _SRC, re.M)
# The ring as `pipeline` below models it (the wait count and one refill per iteration after the barrier).
assert "fa_wait<MM_STAGES - 2>();" in _SRC and "if (t + MM_STAGES - 1 < n_tiles) load_tile(t + MM_STAGES - 1);" in _SRC
MM_TILE = 16 * MM_WARPS
LN2 = 0.6931471805599453


def pipeline(n_tiles, stages=MM_STAGES, pending=None):
    """The kernel's cp.async ring, as written: the prologue commits one group per stage - 1 (tile t
    or empty), each iteration t waits with `wait_group stages - 2`, passes the barrier, issues tile
    t + stages - 1 into stage (t + stages - 1) % stages, commits one group and computes tile t.
    Asserts that tile t's group is complete when computed, that the stage holding it is never
    refilled before every warp is past it (one barrier per iteration), and that every tile is
    computed from its own stage."""
    pending = stages - 2 if pending is None else pending  # the kernel's cp.async.wait_group count
    groups = []  # group index -> tile (None: an empty group)
    stage = {}
    for t in range(stages - 1):
        if t < n_tiles:
            stage[t % stages] = t
        groups.append(t if t < n_tiles else None)
    for t in range(n_tiles):
        complete = len(groups) - pending  # wait_group N: all but the newest N groups have landed
        assert t in groups and groups.index(t) < complete, f"tile {t} computed before its copies landed"
        # barrier: every warp has finished tile t - 1, whose stage is (t - 1) % stages
        nt = t + stages - 1
        if nt < n_tiles:
            st = nt % stages
            assert st != t % stages, "the stage being computed is refilled"
            assert t == 0 or st == (t - 1) % stages, "a stage refilled that a warp may still read"
            stage[st] = nt
        groups.append(nt if nt < n_tiles else None)
        assert stage[t % stages] == t, f"tile {t} read from a stage holding {stage[t % stages]}"


def block(q, kc, vc, row_pos, part_ml, part_acc, B, hq, hkv, D, max_len, split_len, g, s, b, n_splits):
    """One block of decode_attn_mma_impl: (kv head g, split s, sample b)."""
    THREADS = 32 * MM_WARPS
    CPR, KS, DT = D // 8, D // 16, D // 8
    RPR = THREADS // CPR
    group = hq // hkv
    h0 = g * group
    kv_len = row_pos[b] + 1
    start = min(s * split_len, kv_len)
    end = min(start + split_len, kv_len)
    n = end - start
    ml_base = (b * hq + h0) * n_splits + s
    sl2 = np.float32(1 / np.sqrt(D) * 1.4426950408889634)

    o = [[[[0.0] * 4 for _ in range(DT)] for _ in range(32)] for _ in range(MM_WARPS)]
    m_run = [[-np.inf] * 32 for _ in range(MM_WARPS)]
    l_run = [[0.0] * 32 for _ in range(MM_WARPS)]
    if n > 0:
        n_tiles = (n + MM_TILE - 1) // MM_TILE

        def load_tile(t):
            kb = np.full(MM_TILE * D, np.nan, np.float32)
            vb = np.full(MM_TILE * D, np.nan, np.float32)
            for tid in range(THREADS):
                c_row, c_ch = tid // CPR, tid % CPR
                c_sw = sw(D, c_row, c_ch)
                for i in range(MM_TILE // RPR):
                    r = t * MM_TILE + c_row + i * RPR
                    live = r < n
                    dst = c_sw + i * RPR * D
                    assert dst == sw(D, c_row + i * RPR, c_ch)
                    src = ((b * hkv + g) * max_len + start + (r if live else 0))
                    kb[dst: dst + 8] = kc[src, c_ch * 8: c_ch * 8 + 8] if live else 0.0
                    vb[dst: dst + 8] = vc[src, c_ch * 8: c_ch * 8 + 8] if live else 0.0
            assert not np.isnan(kb).any() and not np.isnan(vb).any()
            return kb, vb

        # q A fragments per lane: [(row hr, cols 2tq..), (row hr+8: zero), (row hr, cols 8+2tq..), (zero)].
        qa = []
        for kk in range(KS):
            regs = []
            for l in range(32):
                hr, tq = l >> 2, l & 3
                if hr < group:
                    row = q[(h0 + hr) * B + b]
                    c = kk * 16 + 2 * tq
                    regs.append([(row[c], row[c + 1]), (0.0, 0.0), (row[c + 8], row[c + 9]), (0.0, 0.0)])
                else:
                    regs.append([(0.0, 0.0)] * 4)
            qa.append(regs)

        for t in range(n_tiles):
            kb, vb = load_tile(t)
            for warp in range(MM_WARPS):
                p0 = t * MM_TILE + warp * 16
                if p0 >= n:
                    continue
                sc = [[[0.0] * 4 for _ in range(2)] for _ in range(32)]
                for kk in range(KS):
                    bk = ldsm(kb, [sw(D, warp * 16 + (l & 7) + (l >> 4) * 8, kk * 2 + ((l >> 3) & 1)) for l in range(32)],
                              False)
                    s0 = [sc[l][0] for l in range(32)]
                    s1 = [sc[l][1] for l in range(32)]
                    mma(s0, qa[kk], [bk[l][0] for l in range(32)], [bk[l][1] for l in range(32)])
                    mma(s1, qa[kk], [bk[l][2] for l in range(32)], [bk[l][3] for l in range(32)])
                x = [[[0.0, 0.0] for _ in range(2)] for _ in range(32)]
                mx = [-np.inf] * 32
                for l in range(32):
                    tq = l & 3
                    for nt in range(2):
                        for e in range(2):
                            pos = p0 + nt * 8 + 2 * tq + e
                            xv = np.float32(sc[l][nt][e]) * sl2 if pos < n else -np.inf
                            x[l][nt][e] = xv
                            mx[l] = max(mx[l], xv)
                    # The rows hr + 8 (elements 2, 3) are zero: q rows 8..15 are zero.
                    assert sc[l][0][2] == 0 and sc[l][0][3] == 0 and sc[l][1][2] == 0 and sc[l][1][3] == 0
                mx = [max(mx[(l & ~3) + i] for i in range(4)) for l in range(32)]
                a = []
                for l in range(32):
                    m_new = max(m_run[warp][l], mx[l])
                    assert np.isfinite(m_new)
                    corr = 2.0 ** (m_run[warp][l] - m_new)
                    p = [[2.0 ** (x[l][nt][e] - m_new) for e in range(2)] for nt in range(2)]
                    l_run[warp][l] = l_run[warp][l] * corr + sum(p[0]) + sum(p[1])
                    m_run[warp][l] = m_new
                    for i in range(DT):
                        o[warp][l][i][0] *= corr
                        o[warp][l][i][1] *= corr
                    a.append([(h(p[0][0]), h(p[0][1])), (0.0, 0.0), (h(p[1][0]), h(p[1][1])), (0.0, 0.0)])
                for dp in range(DT // 2):
                    bv = ldsm(vb, [sw(D, warp * 16 + (l & 7) + ((l >> 3) & 1) * 8, dp * 2 + (l >> 4)) for l in range(32)],
                              True)
                    o0 = [o[warp][l][2 * dp] for l in range(32)]
                    o1 = [o[warp][l][2 * dp + 1] for l in range(32)]
                    mma(o0, a, [bv[l][0] for l in range(32)], [bv[l][1] for l in range(32)])
                    mma(o1, a, [bv[l][2] for l in range(32)], [bv[l][3] for l in range(32)])

    # The warps' states through shared memory (red, mls) as the kernel does.
    red = np.full((MM_WARPS, 8, D), np.nan, np.float32)
    mls = np.full((MM_WARPS, 8, 2), np.nan, np.float32)
    for w in range(MM_WARPS):
        for l in range(32):
            hr, tq = l >> 2, l & 3
            lq = sum(l_run[w][(l & ~3) + i] for i in range(4))
            if tq == 0:
                mls[w, hr] = (m_run[w][l], lq)
    for w in range(MM_WARPS):
        for l in range(32):
            hr, tq = l >> 2, l & 3
            M = max(mls[ww, hr, 0] for ww in range(MM_WARPS))
            wsc = 0.0 if m_run[w][l] == -np.inf else 2.0 ** (m_run[w][l] - M)
            for i in range(DT):
                red[w, hr, i * 8 + 2 * tq] = o[w][l][i][0] * wsc
                red[w, hr, i * 8 + 2 * tq + 1] = o[w][l][i][1] * wsc
    for j in range(group):
        part_acc[ml_base + j * n_splits] = red[:, j].sum(0)
        Mj = mls[:, j, 0].max()
        Lj = sum(mls[w, j, 1] * 2.0 ** (mls[w, j, 0] - Mj) for w in range(MM_WARPS) if mls[w, j, 0] != -np.inf)
        part_ml[ml_base + j * n_splits] = (-np.inf if Mj == -np.inf else Mj * LN2, Lj)


def merge(part_ml, part_acc, B, hq, D, n_splits):
    """decode_attn_merge: out[b, h] = Σ_s acc_s e^(m_s − M) / Σ_s l_s e^(m_s − M) over splits with l > 0."""
    out = np.zeros((B, hq, D))
    for b in range(B):
        for hh in range(hq):
            base = (b * hq + hh) * n_splits
            live = [t for t in range(n_splits) if part_ml[base + t, 1] > 0]
            M = max(part_ml[base + t, 0] for t in live)
            w = {t: np.exp(part_ml[base + t, 0] - M) for t in live}
            L = sum(part_ml[base + t, 1] * w[t] for t in live)
            out[b, hh] = sum(part_acc[base + t] * w[t] for t in live) / L
    return out


def check(lens, hq, hkv, D, split_len, seed):
    rng = np.random.default_rng(seed)
    B = len(lens)
    max_len = max(lens) + 3
    n_splits = (max_len + split_len - 1) // split_len
    q = np.float16(rng.standard_normal((hq * B, D)) * 2).astype(np.float32)  # (hq, B, D)
    kc = np.float16(rng.standard_normal((B * hkv * max_len, D))).astype(np.float32)  # (B, hkv, max_len, D)
    vc = np.float16(rng.standard_normal((B * hkv * max_len, D))).astype(np.float32)
    row_pos = [n - 1 for n in lens]
    for b, n in enumerate(lens):  # the kernel must never read past a sample's context
        for g in range(hkv):
            kc[(b * hkv + g) * max_len + n: (b * hkv + g + 1) * max_len] = np.nan
            vc[(b * hkv + g) * max_len + n: (b * hkv + g + 1) * max_len] = np.nan
    part_ml = np.full((B * hq * n_splits, 2), np.nan, np.float32)
    part_acc = np.full((B * hq * n_splits, D), np.nan, np.float32)
    for b in range(B):
        for g in range(hkv):
            for s in range(n_splits):
                block(q, kc, vc, row_pos, part_ml, part_acc, B, hq, hkv, D, max_len, split_len, g, s, b, n_splits)
    assert not np.isnan(part_ml).any() and not np.isnan(part_acc).any(), "a partial result was never written"
    out = merge(part_ml, part_acc, B, hq, D, n_splits)
    group = hq // hkv
    err = 0.0
    for b, n in enumerate(lens):
        for hh in range(hq):
            g = hh // group
            rows = slice((b * hkv + g) * max_len, (b * hkv + g) * max_len + n)
            sc = kc[rows] @ q[hh * B + b] / np.sqrt(D)
            p = np.exp(sc - sc.max())
            ref = (p / p.sum()) @ vc[rows]
            err = max(err, np.abs(out[b, hh] - ref).max())
    ok = np.isfinite(out).all() and err < 5e-3
    print(f"lens={lens} hq={hq} hkv={hkv} D={D} split={split_len} ({n_splits} splits): max |diff| {err:.2e} "
          f"{'ok' if ok else 'MISMATCH'}")
    return ok


if __name__ == "__main__":
    for n_tiles in range(0, 12):
        pipeline(n_tiles)
    for stages, pending in ((MM_STAGES, MM_STAGES - 1), (1, 0)):  # waiting one group short, one stage
        try:
            pipeline(4, stages=stages, pending=pending)
        except AssertionError:
            pass
        else:
            raise SystemExit(f"the pipeline check passed a wrong ring ({stages} stages, wait_group {pending})")
    print(f"cp.async ring of {MM_STAGES} stages, 0..11 tiles: ok")
    ok = True
    # GQA 5 (qwen2.5-14b/32b), 8, 7 (0.5b: 14 / 2), 1; several tiles with a partial last one, splits shorter
    # than a warp's 16 positions, empty splits (the shorter sample of a batch), a 1-position context.
    for lens, hq, hkv, D, split in [([150], 5, 1, 128, 144), ([200, 37], 10, 2, 64, 64), ([70], 8, 1, 128, 16),
                                    ([130, 1], 7, 1, 64, 80), ([65], 1, 1, 128, 2000), ([19, 90], 4, 2, 128, 48)]:
        ok &= check(lens, hq, hkv, D, split, sum(lens))
    sys.exit(0 if ok else 1)
