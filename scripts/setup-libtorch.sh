#!/usr/bin/env bash
# Installs libtorch for the `tch` crate into .libtorch/ (ignored) from the pinned PyPI torch wheel.
#
#   scripts/setup-libtorch.sh            CPU-only (default): the torch wheel without its multi-GB CUDA stack, plus
#                                        the two small CUDA runtime wheels libtorch_cpu.so needs at load time.
#   LQ_TORCH=cuda scripts/setup-libtorch.sh
#                                        the full wheel with its CUDA dependencies; libtorch_cuda.so is linked too.
#
# Layout (see ../shared/docs/frameworks.md, "Verified: tch 0.24 + torch 2.11.0"):
#   .libtorch/venv/       venv holding the wheel(s)
#   .libtorch/libtorch/   LIBTORCH for torch-sys: include -> wheel headers, lib/ -> links to the .so files,
#                         build-version (torch-sys then checks the tch <-> torch pair)
# .cargo/config.toml points LIBTORCH here and sets an $ORIGIN-relative rpath, so no LD_LIBRARY_PATH is needed.
# Idempotent: a second run downloads and rewrites nothing. TORCH_VERSION overrides the pin (tch 0.24 <-> 2.11.0).
set -euo pipefail
torch_version=${TORCH_VERSION:-2.11.0}
mode=${LQ_TORCH:-cpu}
case "$mode" in cpu|cuda) ;; *) echo "LQ_TORCH must be cpu or cuda, got '$mode'" >&2; exit 2;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/.libtorch"
mkdir -p "$out"

[ -x "$out/venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$out/venv"
py="$out/venv/bin/python"
pipq() { "$py" -m pip -q --disable-pip-version-check "$@" --no-warn-conflicts; }
have() { "$py" -m pip show "$1" 2>/dev/null | grep -qx "Version: $2"; }

if [ "$mode" = cuda ]; then
  have torch "$torch_version" && "$py" -c 'import torch' 2>/dev/null || pipq install "torch==$torch_version"
else
  have torch "$torch_version" || pipq install --no-deps "torch==$torch_version"
fi
sp=$("$py" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
meta=$(ls -d "$sp/torch-$torch_version.dist-info")/METADATA

# libtorch_cpu.so has hard NEEDED entries on libcudart and libcupti: install only the wheels holding them, at
# the versions the torch wheel pins (CUDA 13 wheels pin cuda-toolkit[...]==X; CUDA 12 wheels pin the cu12 ones).
pin() { sed -n "s/^Requires-Dist: $1\(\[[^]]*\]\)\{0,1\}==\([^ ;]*\).*/\2/p" "$meta" | head -n1; }
if [ "$mode" = cpu ]; then
  tk=$(pin cuda-toolkit)
  if [ -n "$tk" ]; then
    have cuda-toolkit "$tk" || pipq install "cuda-toolkit[cudart,cupti]==$tk"
  else
    for p in nvidia-cuda-runtime-cu12 nvidia-cuda-cupti-cu12; do
      v=$(pin "$p")
      if [ -n "$v" ] && ! have "$p" "$v"; then pipq install --no-deps "$p==$v"; fi
    done
  fi
fi

# The LIBTORCH folder, relative links into the venv. torch-sys links libtorch_cuda whenever that file is in lib/,
# so CPU mode leaves it out. libcudart/libcupti sit next to libtorch_cpu.so, whose RPATH has $ORIGIN.
lt="$out/libtorch"; rel=${sp#"$out"/}
mkdir -p "$lt/lib"
lnk() { [ "$(readlink "$2" 2>/dev/null)" = "$1" ] || ln -sfn "$1" "$2"; }
put() { [ "$(cat "$2" 2>/dev/null)" = "$1" ] || printf '%s\n' "$1" > "$2"; }
lnk "../$rel/torch/include" "$lt/include"
libs="libc10.so libtorch_cpu.so libtorch.so libshm.so libgomp.so.1"
[ "$mode" = cuda ] && libs="$libs libtorch_cuda.so libc10_cuda.so"
[ "$mode" = cpu ] && rm -f "$lt/lib/libtorch_cuda.so" "$lt/lib/libc10_cuda.so"
for f in $libs; do
  if [ -e "$sp/torch/lib/$f" ]; then lnk "../../$rel/torch/lib/$f" "$lt/lib/$f"; fi
done
# In CUDA mode every nvidia runtime library is linked next to libtorch_cuda.so so its $ORIGIN rpath finds them.
if [ "$mode" = cuda ]; then pat='nvidia/*/lib/*.so* nvidia/*/*/lib/*.so*'; else pat='nvidia/*/lib/libcudart.so.* nvidia/*/lib/libcupti.so.*'; fi
for f in $(cd "$sp" && ls $pat 2>/dev/null); do
  lnk "../../$rel/$f" "$lt/lib/${f##*/}"
done
put "$(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$sp/torch/version.py")" "$lt/build-version"
echo "LIBTORCH=$lt ($(cat "$lt/build-version"), $mode)"
