#!/usr/bin/env python3
"""Compile-check the cuda engine's kernels with NVRTC (no GPU needed).

Compiles every src/engine/builtin/cuda/kernels/*.cu for each requested virtual architecture
(default compute_90 and compute_80) with --std=c++17 (IEEE math: no --use_fast_math), fails on
any error OR warning (a non-empty log), and checks that every expected extern "C" kernel is an
.entry of the PTX. With --sass it also compiles to a cubin for sm_90 with `ptxas -v` and prints
register / spill / shared-memory usage per kernel (spills are reported as a failure).

Usage:
  NVRTC_LIB=/path/to/libnvrtc.so.13 CUDA_INCLUDE=/path/to/include python3 tests/nvrtc-check/check.py [--sass]
  (or --nvrtc PATH --include DIR; see README.md in this folder)
"""
import argparse
import ctypes
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KDIR = ROOT / "src/engine/builtin/cuda/kernels"

# file -> [(base name, typed)]; typed kernels exist as base_f16 and base_bf16.
EXPECTED = {
    "init.cu": [("init_weight", True), ("init_f32", False)],
    "norm.cu": [("add_rmsnorm", True), ("embedding", True)],
    "rope.cu": [("qkv_rope", True)],
    "attention.cu": [("causal_softmax", True), ("decode_attn_partial", True), ("decode_attn_combine", True)],
    "sampling.cu": [("argmax_rows", False), ("select_tokens", False)],
    "activation.cu": [("silu_mul", True)],
    "gemv.cu": [("gemv", True), ("gemv_bulk", True)],
    "decode.cu": [(f"decode_attn_fast_g{g}", True) for g in range(1, 9)] + [("decode_attn_merge", True)]
    + [(f"decode_attn_mma_d{d}", True) for d in (64, 128)],
    "prefill.cu": [(f"prefill_attn_d{d}_{w}", True) for d in (64, 128) for w in ("w4", "w8", "w4m2", "w4m2s3")],
}


def names(file):
    out = []
    for base, typed in EXPECTED[file]:
        out += [f"{base}_f16", f"{base}_bf16"] if typed else [base]
    return out


class Nvrtc:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        L = self.lib
        L.nvrtcGetErrorString.restype = ctypes.c_char_p
        L.nvrtcCreateProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_char_p,
                                         ctypes.c_int, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)]
        L.nvrtcCompileProgram.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        for f in ("nvrtcGetProgramLogSize", "nvrtcGetPTXSize", "nvrtcGetCUBINSize"):
            getattr(L, f).argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        for f in ("nvrtcGetProgramLog", "nvrtcGetPTX", "nvrtcGetCUBIN"):
            getattr(L, f).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        L.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        L.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]

    def version(self):
        a, b = ctypes.c_int(), ctypes.c_int()
        self.lib.nvrtcVersion(ctypes.byref(a), ctypes.byref(b))
        return f"{a.value}.{b.value}"

    def _get(self, prog, size_fn, get_fn):
        n = ctypes.c_size_t()
        getattr(self.lib, size_fn)(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value)
        getattr(self.lib, get_fn)(prog, buf)
        return buf.raw[: n.value]

    def compile(self, src, name, opts, cubin=False):
        """Returns (ok, log, ptx_or_cubin_bytes)."""
        prog = ctypes.c_void_p()
        rc = self.lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None)
        if rc != 0:
            raise RuntimeError(f"nvrtcCreateProgram: {self.lib.nvrtcGetErrorString(rc).decode()}")
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = self.lib.nvrtcCompileProgram(prog, len(opts), arr)
        log = self._get(prog, "nvrtcGetProgramLogSize", "nvrtcGetProgramLog").rstrip(b"\0").decode(errors="replace")
        out = b""
        if rc == 0:
            out = self._get(prog, "nvrtcGetCUBINSize", "nvrtcGetCUBIN") if cubin else \
                self._get(prog, "nvrtcGetPTXSize", "nvrtcGetPTX")
        self.lib.nvrtcDestroyProgram(ctypes.byref(prog))
        return rc == 0, log.strip(), out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nvrtc", default=os.environ.get("NVRTC_LIB", "libnvrtc.so"),
                    help="path to libnvrtc.so.* (env NVRTC_LIB); libnvrtc-builtins must sit next to it or on LD_LIBRARY_PATH")
    ap.add_argument("--include", default=os.environ.get("CUDA_INCLUDE", ""),
                    help="dir holding cuda_fp16.h / cuda_bf16.h (env CUDA_INCLUDE; GPU machine: /usr/local/cuda/include)")
    ap.add_argument("--arch", action="append", help="virtual arch(s), default compute_90 and compute_80")
    ap.add_argument("--sass", action="store_true", help="also build sm_90 cubins with ptxas -v and report registers/spills")
    ap.add_argument("--dump", help="directory to write the PTX into")
    ap.add_argument("--only", action="append", help="check only this file (e.g. prefill.cu); repeatable")
    a = ap.parse_args()

    nv = Nvrtc(a.nvrtc)
    print(f"NVRTC {nv.version()} ({a.nvrtc})")
    archs = a.arch or ["compute_90", "compute_80"]
    inc = [f"-I{a.include}"] if a.include else []
    failed = False
    for f in EXPECTED:
        if a.only and f not in a.only:
            continue
        # As the registry (gpu.rs) does: common.cuh in front of every module.
        src = (KDIR / "common.cuh").read_text() + f'\n#line 1 "{f}"\n' + (KDIR / f).read_text()
        for arch in archs:
            opts = ["--std=c++17", f"-arch={arch}"] + inc
            ok, log, ptx = nv.compile(src, f, opts)
            status = "ok"
            if not ok:
                status, failed = "ERROR", True
            elif log:
                status, failed = "WARNING", True
            missing = []
            if ok:
                text = ptx.decode(errors="replace")
                entries = set(re.findall(r"\.entry\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(", text))
                missing = [n for n in names(f) if n not in entries]
                extra = sorted(entries - set(names(f)))
                if missing:
                    status, failed = "MISSING " + ",".join(missing), True
                if extra:
                    print(f"  note: {f} also defines {extra}")
                if a.dump:
                    Path(a.dump).mkdir(parents=True, exist_ok=True)
                    (Path(a.dump) / f"{f[:-3]}.{arch}.ptx").write_text(text)
            print(f"{f:15s} {arch:11s} {status}")
            if log:
                print("  " + log.replace("\n", "\n  "))
        if a.sass:
            opts = ["--std=c++17", "-arch=sm_90", "-Xptxas", "-v"] + inc
            ok, log, _ = nv.compile(src, f, opts, cubin=True)
            if not ok:
                failed = True
                print(f"{f:15s} sm_90 cubin ERROR\n  " + log.replace("\n", "\n  "))
                continue
            for line in log.splitlines():
                if "Compiling entry" in line or "registers" in line or "spill" in line:
                    print("    " + line.strip())
                m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
                if m and (int(m.group(1)) or int(m.group(2))):
                    failed = True
                    print("    ^^^ SPILLS")
    print("FAILED" if failed else "all kernels compiled cleanly")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
