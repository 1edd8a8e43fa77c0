#!/usr/bin/env bash
# LMDeploy TurboMind (lmdeploy 0.18.0, CUDA 12 build) onto a GPU machine that has CUDA 13 only and
# takes at most 64 MiB per copy: pack what the TurboMind path needs here, carry it there in parts,
# reassemble and check it there.
#
#   pack    [-o DIR] [--part-mib N] [--real-cublas]     (here: needs pip, gcc, xz, PyPI)
#   seal    STAGE [-o DIR] [--part-size 40M] [--level -9e]  (here: a directory you assembled, as parts + MANIFEST)
#   stage   K [-o DIR] [--to DIR]                       (here: put part K + MANIFEST into the carried folder)
#   install [-b DIR] [-d DEST]                          (there: keep the parts that arrived, unpack when all have)
#   status  [-d DEST]                                   (there: what is in DEST)
#   env     [-d DEST]                                   (there: the exports that make `import lmdeploy` work)
#
# Defaults: pack to .tm-bundle/ (all parts, not carried), stage into .tmb/ (carried: name it in
# `carry`), DEST /var/tmp/tpprof-turbomind on the GPU machine (kept while the machine is up).
#
# What the bundle holds (sizes printed by pack, and in MANIFEST):
#   site/        lmdeploy 0.18.0 (the wheel without lib64/libxgrammar.a and the C++ headers: not loaded
#                at run time) and the pure-Python packages its TurboMind import path needs that the GPU
#                image lacks (pydantic 2 + pydantic-core, mmengine-lite and its deps, pybase64,
#                shortuuid): found by importing lmdeploy.turbomind with every other package stubbed.
#   lib/         libcudart.so.12 (nvidia-cuda-runtime-cu12 12.9.79); libcublas.so.12 and an empty
#                libcublasLt.so.12: the six-function stand-in of launch/turbomind/cublas12-shim.c that
#                forwards to the machine's CUDA 13 cuBLAS (with --real-cublas: cuBLAS 12.9.3.13 itself,
#                ~8 parts more). libnccl.so.2 is linked at install to the GPU image's NCCL (the torch
#                venv's 2.28.9: the NCCL 2.28 device API that _turbomind imports is there).
#
# A part that arrives is checked (sha256) and kept in DEST/parts, so the parts can come in separate
# calls; once all are there they are joined, checked again and unpacked into DEST (DEST/READY).
# A fresh machine (the last one was handed back) has an empty DEST: install says so and which parts
# to bring. Exit codes: 0 ready, 3 parts still missing, 1 error.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LMDEPLOY_VERSION=0.18.0
CUDART_WHEEL="nvidia-cuda-runtime-cu12==12.9.79"
CUBLAS_WHEEL="nvidia-cublas-cu12==12.9.3.13"
# Import closure of lmdeploy.turbomind on the GPU image (its own packages excluded), pinned.
PY_WHEELS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
           mmengine-lite==0.10.7 addict==2.4.0 termcolor==3.3.0 yapf==0.43.0 platformdirs==4.14.9
           pybase64==1.5.1 shortuuid==1.0.13)
PIP_PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
              --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
              --platform manylinux1_x86_64)

die() { echo "turbomind-bundle: $*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
size() { stat -c %s "$1"; }

# unzip a wheel (a zip) into DIR with Python: the GPU image has no unzip, this machine may not either.
unwheel() { python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$1" "$2"; }

pack() {
  local out="$here/.tm-bundle" part_mib=40 real_cublas=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -o) out="$2"; shift 2 ;;
      --part-mib) part_mib="$2"; shift 2 ;;
      --real-cublas) real_cublas=1; shift ;;
      *) die "pack: unknown argument $1" ;;
    esac
  done
  command -v xz >/dev/null || die "pack needs xz (apt-get install xz-utils)"
  command -v gcc >/dev/null || die "pack needs gcc (apt-get install build-essential)"
  python3 -m pip --version >/dev/null 2>&1 || die "pack needs pip for python3"
  local dl="$out/download" stage="$out/stage" t
  rm -rf "$stage" "$out"/part-* "$out/MANIFEST"
  mkdir -p "$dl" "$stage/site" "$stage/lib"

  t=$(now)
  local wheels=("lmdeploy==$LMDEPLOY_VERSION" "$CUDART_WHEEL" "${PY_WHEELS[@]}")
  [[ $real_cublas == 1 ]] && wheels+=("$CUBLAS_WHEEL")
  python3 -m pip download -q --no-deps "${PIP_PLATFORM[@]}" -d "$dl" "${wheels[@]}"
  echo "download: $(mib "$(du -sb "$dl" | cut -f1)") of wheels in $(secs "$t") s"

  t=$(now)
  local w
  for w in "$dl"/*.whl; do
    case "$(basename "$w")" in
      nvidia_cuda_runtime_cu12-*) unwheel "$w" "$out/cudart" && cp "$out/cudart/nvidia/cuda_runtime/lib/libcudart.so.12" "$stage/lib/" ;;
      nvidia_cublas_cu12-*) unwheel "$w" "$out/cublas" && cp "$out/cublas/nvidia/cublas/lib/"libcublas{,Lt}.so.12 "$stage/lib/" ;;
      *) unwheel "$w" "$stage/site" ;;
    esac
  done
  rm -rf "$out/cudart" "$out/cublas" "$stage/site/lmdeploy/turbomind/lib64" "$stage/site/lmdeploy/turbomind/include" \
         "$stage/site/bin"
  if [[ $real_cublas == 0 ]]; then
    local src="$here/launch/turbomind"
    gcc -shared -fPIC -O2 -Wall -Wl,-soname,libcublas.so.12 -Wl,--version-script="$src/cublas12-shim.map" \
        -o "$stage/lib/libcublas.so.12" "$src/cublas12-shim.c" -ldl
    echo 'void tpprof_cublaslt12_stub(void) {}' | gcc -shared -fPIC -x c -Wl,-soname,libcublasLt.so.12 \
        -o "$stage/lib/libcublasLt.so.12" -
  fi
  local cublas="cuBLAS 13 through the 6-function stand-in (launch/turbomind/cublas12-shim.c)"
  [[ $real_cublas == 1 ]] && cublas="${CUBLAS_WHEEL/==/ }"
  cat > "$stage/BUNDLE-INFO" <<EOF
lmdeploy $LMDEPLOY_VERSION (TurboMind), Python 3.12 x86_64
cudart: ${CUDART_WHEEL/==/ }
cublas: $cublas
nccl: the GPU machine's (linked at install)
python packages: ${PY_WHEELS[*]}
packed: $(date -u +%Y-%m-%dT%H:%M:%SZ) by $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)
EOF
  echo "assembled: $(mib "$(du -sb "$stage" | cut -f1)") unpacked in $(secs "$t") s"

  seal "$stage" -o "$out" --part-size "${part_mib}M"
  echo "next: for K in 1..N: $0 stage K, then a device call that carries .tmb and runs: $0 install"
}

# seal STAGE [-o DIR] [--part-size SIZE] [--level -N]: STAGE (a directory) as bundle.tar.xz (xz level
# -N, default -9e; -1 for data that is compressed already) in parts of SIZE (split's units: 40M,
# 100K, ...) with their MANIFEST in DIR. pack uses it; so can anyone who
# assembled a directory by hand.
seal() {
  local stage="${1:?seal STAGE_DIR}" out="$here/.tm-bundle" part_size=40M level=-9e t
  shift
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -o) out="$2"; shift 2 ;;
      --part-size) part_size="$2"; shift 2 ;;
      --level) level="$2"; shift 2 ;;
      *) die "seal: unknown argument $1" ;;
    esac
  done
  [[ -d "$stage" ]] || die "seal: $stage is not a directory"
  command -v xz >/dev/null || die "seal needs xz (apt-get install xz-utils)"
  mkdir -p "$out"
  rm -f "$out"/part-* "$out/MANIFEST"
  t=$(now)
  tar -C "$stage" -cf - . | xz "$level" -T0 > "$out/bundle.tar.xz"
  echo "compressed: $(mib "$(size "$out/bundle.tar.xz")") (xz $level) in $(secs "$t") s"
  (cd "$out" && split -b "$part_size" -d -a 2 bundle.tar.xz part-)
  {
    echo "# turbomind bundle: parts of bundle.tar.xz (sha256 size name), then the whole"
    local p
    for p in "$out"/part-*; do
      echo "$(sha256sum "$p" | cut -d' ' -f1) $(size "$p") $(basename "$p")"
    done
    echo "$(sha256sum "$out/bundle.tar.xz" | cut -d' ' -f1) $(size "$out/bundle.tar.xz") bundle.tar.xz"
  } > "$out/MANIFEST"
  rm -f "$out/bundle.tar.xz"
  echo "parts: $(grep -c ' part-' "$out/MANIFEST") of at most $part_size in $out (MANIFEST lists them)"
}

stage() {
  local k="${1:?stage K}" out="$here/.tm-bundle" to="$here/.tmb"
  shift
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -o) out="$2"; shift 2 ;;
      --to) to="$2"; shift 2 ;;
      *) die "stage: unknown argument $1" ;;
    esac
  done
  [[ -f "$out/MANIFEST" ]] || die "no $out/MANIFEST: run '$0 pack' first"
  local name
  name="$(printf 'part-%02d' "$((10#$k - 1))")"
  [[ -f "$out/$name" ]] || die "no part $k ($out/$name): the bundle has $(grep -c ' part-' "$out/MANIFEST")"
  rm -rf "$to"
  mkdir -p "$to"
  cp "$out/MANIFEST" "$out/$name" "$to/"
  echo "staged part $k ($name, $(mib "$(size "$to/$name")")) in $to"
}

# The venv's NCCL (libnccl.so.2) on the GPU image, else any in the loader's cache.
find_nccl() {
  local p
  p="$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null || true)"
  [[ -n "$p" && -f "$p" ]] && { echo "$p"; return; }
  ldconfig -p | awk '/libnccl\.so\.2 /{print $NF; exit}'
}

install() {
  local from="$here/.tmb" dest="/var/tmp/tpprof-turbomind"
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -b) from="$2"; shift 2 ;;
      -d) dest="$2"; shift 2 ;;
      *) die "install: unknown argument $1" ;;
    esac
  done
  if [[ -f "$dest/READY" ]]; then
    if [[ -f "$from/MANIFEST" ]] && ! cmp -s "$from/MANIFEST" "$dest/parts/MANIFEST"; then
      die "$dest holds another bundle than $from/MANIFEST lists: install this one elsewhere (-d) or remove $dest"
    fi
    echo "turbomind bundle: ready in $dest ($(head -1 "$dest/BUNDLE-INFO"))"
    return 0
  fi
  mkdir -p "$dest/parts"
  local manifest="$from/MANIFEST"
  [[ -f "$manifest" ]] || manifest="$dest/parts/MANIFEST"
  if [[ ! -f "$manifest" ]]; then
    echo "turbomind bundle: nothing in $dest and no $from/MANIFEST: this machine is fresh (the last one was" \
         "handed back, which empties it): stage part 1 ('$0 stage 1') and carry .tmb" >&2
    return 3
  fi
  if [[ -f "$dest/parts/MANIFEST" ]] && ! cmp -s "$manifest" "$dest/parts/MANIFEST"; then
    echo "turbomind bundle: a different bundle was packed since the parts in $dest came: starting over" >&2
    rm -rf "$dest/parts" && mkdir -p "$dest/parts"
  fi
  cp "$manifest" "$dest/parts/MANIFEST" 2>/dev/null || true
  local sum sz name t
  t=$(now)
  for f in "$from"/part-*; do
    [[ -e "$f" ]] || continue
    name="$(basename "$f")"
    read -r sum sz _ < <(grep " $name\$" "$dest/parts/MANIFEST") || die "$name is not in the MANIFEST"
    [[ "$(sha256sum "$f" | cut -d' ' -f1)" == "$sum" ]] || die "$name: sha256 differs from the MANIFEST (a broken copy: stage and bring it again)"
    cp "$f" "$dest/parts/$name"
    echo "turbomind bundle: got $name ($(mib "$sz"), sha256 ok)"
  done
  local missing=() have=0 total=0
  while read -r sum sz name; do
    [[ "$name" == part-* ]] || continue
    total=$((total + 1))
    if [[ -f "$dest/parts/$name" ]]; then have=$((have + 1)); else missing+=("$((10#${name#part-} + 1))"); fi
  done < <(grep -v '^#' "$dest/parts/MANIFEST")
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "turbomind bundle: $have of $total parts in $dest; still missing part(s) ${missing[*]}: stage each ('$0 stage K')" \
         "and carry .tmb in the next call, before this machine is handed back (~30 s idle)" >&2
    return 3
  fi
  read -r sum sz _ < <(grep ' bundle.tar.xz$' "$dest/parts/MANIFEST")
  cat "$dest/parts"/part-* > "$dest/bundle.tar.xz"
  [[ "$(sha256sum "$dest/bundle.tar.xz" | cut -d' ' -f1)" == "$sum" ]] || {
    rm -rf "$dest/parts" "$dest/bundle.tar.xz"; die "the joined parts do not match the MANIFEST's sha256: bring them all again"; }
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$dest/bundle.tar.xz" "$dest"
  rm -f "$dest/bundle.tar.xz" "$dest/parts"/part-*
  local nccl
  nccl="$(find_nccl)"
  if [[ -n "$nccl" ]]; then
    mkdir -p "$dest/lib"
    ln -sf "$nccl" "$dest/lib/libnccl.so.2"
    echo "nccl: $nccl" >> "$dest/BUNDLE-INFO"
  else
    echo "turbomind bundle: warning: no libnccl.so.2 here (looked in python3's nvidia.nccl and ldconfig):" \
         "_turbomind will not load until one is on LD_LIBRARY_PATH" >&2
  fi
  touch "$dest/READY"
  echo "turbomind bundle: ready in $dest: joined, checked and unpacked $(mib "$sz") in $(secs "$t") s; $(du -sh "$dest" | cut -f1) on disk"
  cat "$dest/BUNDLE-INFO"
}

status() {
  local dest="/var/tmp/tpprof-turbomind"
  [[ "${1:-}" == "-d" ]] && dest="$2"
  if [[ -f "$dest/READY" ]]; then echo "ready: $dest"; cat "$dest/BUNDLE-INFO"; return 0; fi
  if [[ -d "$dest/parts" ]]; then echo "incomplete: $(ls "$dest/parts" | grep -c '^part-') part(s) in $dest/parts"; return 3; fi
  echo "empty: no bundle in $dest (a fresh machine)"; return 3
}

env_() {
  local dest="/var/tmp/tpprof-turbomind"
  [[ "${1:-}" == "-d" ]] && dest="$2"
  [[ -f "$dest/READY" ]] || die "no ready bundle in $dest: run '$0 install' first"
  echo "export PYTHONPATH=$dest/site\${PYTHONPATH:+:\$PYTHONPATH}"
  echo "export LD_LIBRARY_PATH=$dest/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  pack) pack "$@" ;;
  seal) seal "$@" ;;
  stage) stage "$@" ;;
  install) install "$@" ;;
  status) status "$@" ;;
  env) env_ "$@" ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
