#!/usr/bin/env python3
"""Host mirror of gemv.cu's gemv_bulk (no GPU needed): the persistent grid's split of W into blocks
(contiguous row ranges) and each block's rows into units (GB_CHUNK bytes of one row, the last of a
row shorter) shared out to its warps, each warp's ring of `stages` cp.async.bulk buffers with one
mbarrier each (the prologue fills every stage, unit j waits on stage j % stages for the phase parity
(j / stages) & 1 and the refill of unit j + stages goes into the buffer it frees), the lanes' 16-byte
vectors of a unit, rows a warp has whole written once and rows it shares parked in its head / tail
slot and summed in warp order, and the block's shared-memory layout (the ring, the barriers, x on a
16-byte boundary, the row sums, the slots) — against x · Wᵀ in f64, for shapes
whose rows end mid-chunk, warps that start and end mid-row, more blocks than rows per block, batches.

usage: python3 tests/nvrtc-check/gemv_sim.py   (needs numpy; exits non-zero on a mismatch)
"""
import re
import sys
from pathlib import Path

import numpy as np

_SRC = (Path(__file__).resolve().parents[2] / "src/engine/builtin/cuda/kernels/gemv.cu").read_text()
GB_CHUNK = int(re.search(r"^#define GB_CHUNK (\d+)$", _SRC, re.M).group(1))
GEMV_MAX_ROWS = int(re.search(r"^#define GEMV_MAX_ROWS (\d+)$", _SRC, re.M).group(1))
VEC_PER_LANE = GB_CHUNK // 16 // 32
# What the mirror models, as the kernel writes it.
for line in (
    "const int r0 = (int)((long long)b * out / nb), r1 = (int)((long long)(b + 1) * out / nb);",
    "const int cpr = (row_bytes + GB_CHUNK - 1) / GB_CHUNK;",
    "const int u0 = (int)((long long)units * warp / nw), u1 = (int)((long long)units * (warp + 1) / nw);",
    "gb_wait(&bars[s], (unsigned)phase, spin);",
    "const unsigned char* src = unit_src(u0 + j + stages, bytes);",
    "gb_copy(ring + (size_t)s * GB_CHUNK, src, bytes, &bars[s], policy);",
    "if (k == cpr - 1 || j == n_units - 1) {",
    "const bool whole = from_row_start && k == cpr - 1;",
    "const int slot = 2 * warp + (from_row_start ? 1 : 0);",
    "bool from_row_start = k == 0;",
    "for (int p = 0; p < 2 * nw; ++p) {",
    "return ((unsigned)nw * stages * (GB_CHUNK + 8) + 15u) & ~15u;",
    "float* ys = reinterpret_cast<float*>(xs + (size_t)n_rows * in);",
    "int* part_row = reinterpret_cast<int*>(ys + (size_t)n_rows * rows_max);",
    "float* part_val = reinterpret_cast<float*>(part_row + 2 * nw);",
):
    assert line in _SRC, f"gemv.cu no longer has: {line}"

ELEM = 2  # f16 / bf16 bytes


def smem_layout(nw, stages, n_rows, in_, rows_max):
    """Byte ranges of the kernel's regions; asserts alignment and no overlap."""
    ring = (0, nw * stages * GB_CHUNK)
    bars = (ring[1], ring[1] + nw * stages * 8)
    x_at = (nw * stages * (GB_CHUNK + 8) + 15) & ~15
    xs = (x_at, x_at + n_rows * in_ * ELEM)
    ys = (xs[1], xs[1] + n_rows * rows_max * 4)
    part_row = (ys[1], ys[1] + 2 * nw * 4)
    part_val = (part_row[1], part_row[1] + 2 * nw * n_rows * 4)
    assert bars[0] % 8 == 0 and xs[0] % 16 == 0 and ys[0] % 4 == 0 and part_row[0] % 4 == 0
    assert ring[1] <= bars[0] and bars[1] <= xs[0] and xs[1] <= ys[0]
    return part_val[1]


def gemv_bulk(w, x, nb, nw, stages):
    """y (n_rows × out) as gemv_bulk computes it, in f32 sums per warp piece; checks the ring."""
    out, in_ = w.shape
    n_rows = x.shape[0]
    assert in_ % 8 == 0 and 1 <= n_rows <= GEMV_MAX_ROWS and nb <= out
    row_bytes = in_ * ELEM
    cpr = (row_bytes + GB_CHUNK - 1) // GB_CHUNK
    rows_max = (out + nb - 1) // nb
    smem_layout(nw, stages, n_rows, in_, rows_max)
    y = np.full((n_rows, out), np.nan)
    seen = np.zeros(out * cpr, dtype=int)  # each unit of W read exactly once over the grid
    for b in range(nb):
        r0, r1 = b * out // nb, (b + 1) * out // nb
        units = (r1 - r0) * cpr
        ys = np.full((n_rows, rows_max), np.nan, dtype=np.float32)  # not zeroed by the kernel
        part_row = [-1] * (2 * nw)
        part_val = np.full((2 * nw, n_rows), np.nan, dtype=np.float32)

        def unit_src(u):
            r, k = r0 + u // cpr, u % cpr
            off = k * GB_CHUNK
            return r, off, min(GB_CHUNK, row_bytes - off)

        for warp in range(nw):
            u0, u1 = units * warp // nw, units * (warp + 1) // nw
            n_units = u1 - u0
            # The ring: stage -> list of (unit, bytes) copies issued into it, in order; completed
            # phases per stage.
            issued = {s: [] for s in range(stages)}
            for j in range(min(stages, n_units)):
                issued[j].append(unit_src(u0 + j))
            completed = [0] * stages
            acc = np.zeros(n_rows, dtype=np.float32)
            rl, k = u0 // cpr, u0 % cpr
            s, phase = 0, 0
            from_row_start = k == 0
            for j in range(n_units):
                # gb_wait(stage s, parity phase): returns once the phase of that parity completed,
                # i.e. the (completed[s] + 1)-th copy into stage s has landed; it must be unit j's.
                n_done = completed[s]
                assert n_done % 2 == phase, (b, warp, j, "waits on the wrong phase")
                assert len(issued[s]) > n_done, (b, warp, j, "waits on a stage nothing was copied into")
                r, off, nbytes = issued[s][n_done]
                completed[s] += 1
                assert (r, off) == (r0 + rl, k * GB_CHUNK), (b, warp, j, "computes another unit's buffer")
                assert nbytes % 16 == 0 and off % 16 == 0
                seen[r * cpr + off // GB_CHUNK] += 1
                elems = nbytes // ELEM
                col0 = off // ELEM
                buf = w[r, col0 : col0 + elems]
                # The lanes' vectors: lane + 32·i, 8 elements each, those inside the unit.
                part = np.zeros(n_rows, dtype=np.float32)
                covered = 0
                for lane in range(32):
                    for i in range(VEC_PER_LANE):
                        v = lane + 32 * i
                        if v * 8 < elems:
                            wv = buf[v * 8 : v * 8 + 8].astype(np.float32)
                            for br in range(n_rows):
                                part[br] += np.float32(np.dot(wv, x[br, col0 + v * 8 : col0 + v * 8 + 8].astype(np.float32)))
                            covered += 8
                assert covered == elems, (b, warp, j, "lanes miss part of a unit")
                acc += part
                # Refill after every lane is done with the buffer.
                if j + stages < n_units:
                    issued[s].append(unit_src(u0 + j + stages))
                if k == cpr - 1 or j == n_units - 1:
                    whole = from_row_start and k == cpr - 1
                    slot = 2 * warp + (1 if from_row_start else 0)
                    if whole:
                        ys[:, rl] = acc
                    else:
                        assert part_row[slot] == -1, (b, warp, "a slot written twice")
                        part_val[slot] = acc
                        part_row[slot] = rl
                    acc[:] = 0
                    from_row_start = True
                k += 1
                if k == cpr:
                    k, rl = 0, rl + 1
                s += 1
                if s == stages:
                    s, phase = 0, phase ^ 1
            assert all(completed[t] == len(issued[t]) for t in range(stages)), "a copy is never waited for"
        # The block's write: a shared row sums its slots in slot (= warp) order, else ys.
        for r in range(r1 - r0):
            slots = [p for p in range(2 * nw) if part_row[p] == r]
            if slots:
                assert len(slots) >= 2, (b, r, "a row shared by one warp only")
                v = np.zeros(n_rows, dtype=np.float32)
                for p in slots:
                    v += part_val[p]
                y[:, r0 + r] = v
            else:
                y[:, r0 + r] = ys[:, r]
        assert not np.isnan(y[:, r0:r1]).any(), (b, "a row never written")
    assert (seen == 1).all(), "a unit of W read twice or never"
    return y


def main():
    rng = np.random.default_rng(3)
    cases = [
        # out, in, n_rows, nb, nw, stages
        (64, 1024, 1, 8, 4, 3),       # one chunk per row (2 KiB), 8 rows per block
        (37, 1032, 1, 5, 3, 2),       # rows of 2 064 bytes: a 16-byte last chunk; uneven blocks
        (40, 13824 // 8, 2, 7, 4, 8),  # down-like rows ending mid-chunk, batch of 2
        (5, 3000, 3, 5, 8, 4),         # one row per block, warps splitting a row, more warps than units
        (23, 5120 // 4, 8, 3, 4, 8),   # the largest batch
        (9, 8, 1, 9, 2, 1),            # 16-byte rows, one stage
    ]
    worst = 0.0
    for out, in_, n_rows, nb, nw, stages in cases:
        w = rng.standard_normal((out, in_)).astype(np.float16)
        x = rng.standard_normal((n_rows, in_)).astype(np.float16)
        want = x.astype(np.float64) @ w.astype(np.float64).T
        got = gemv_bulk(w, x, nb, nw, stages)
        err = np.max(np.abs(got - want) / (1 + np.abs(want)))
        worst = max(worst, err)
        if not err < 1e-4:
            print(f"gemv_sim: MISMATCH out={out} in={in_} rows={n_rows} nb={nb} nw={nw} stages={stages}: {err:.3g}")
            sys.exit(1)
    print(f"gemv_sim: gemv_bulk mirror matches x·Wᵀ on {len(cases)} shapes (max rel err {worst:.2g})")


if __name__ == "__main__":
    main()
