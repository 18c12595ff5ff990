"""Build of lth_sparse's optional compiled parts.

- ``lth_sparse._C``: C++ CPU kernels (OpenMP where the compiler has it), built
  wherever a C++ compiler is found.
- ``lth_sparse._cuda``: CUDA kernels from ``csrc/cuda``. ``LTH_SPARSE_CUDA=1``
  forces them, ``0`` skips them; unset, they are built when nvcc is found and
  torch sees a GPU. With ``LTH_SPARSE_CUDA=1`` they compile on a machine without
  a GPU too (set ``TORCH_CUDA_ARCH_LIST``, e.g. ``9.0``).

A failed or impossible build of either part never fails the install: the
package then runs on torch alone and says so once at import.

Compiled kernels tie the install to the torch they were built against (its C++
ABI), so a build that compiles them requires exactly that torch release
(``torch==X.Y.Z``, any local build such as ``+cpu``); a build with no compiler
requires ``torch>=2.4``. The requirement is decided before the compile runs, so a
compile that fails (the install then runs on torch alone) still pins the release.
pyproject.toml declares the dependencies dynamic for this. The compiled objects of
every build of a clone, editable or wheel, live in its
``build/temp.<platform>-<python>/``, where ninja recompiles only what changed (a
source, a header, a flag, another torch), so a second install relinks only.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))

# The oldest torch the package runs on, compiled kernels or not.
TORCH_FLOOR = "torch>=2.4"
DEPENDENCIES = ["numpy", "safetensors>=0.4", "tqdm", "matplotlib", "pyyaml"]


def _log(msg: str) -> None:
    print(f"[lth_sparse setup] {msg}", file=sys.stderr)


def _find_cuda_home() -> str | None:
    """CUDA_HOME if set, else the folder above the nvcc on PATH, else /usr/local/cuda.

    The nvcc on PATH may be a wrapper script (e.g. /usr/local/bin/nvcc): a folder
    counts only if it holds the toolkit's headers as well.
    """
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


def _compiler_works(flags: list[str]) -> bool:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write(
                "#include <omp.h>\nint main(){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
                if "-fopenmp" in flags
                else "int main(){return 0;}\n"
            )
        try:
            subprocess.run(
                [cxx, *flags, src, "-o", os.path.join(tmp, "probe")], check=True, capture_output=True, timeout=120
            )
        except (subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired):
            return False
    return True


def _want_cuda(torch) -> tuple[bool, str | None]:
    setting = os.environ.get("LTH_SPARSE_CUDA", "").strip()
    cuda_home = _find_cuda_home()
    if setting == "0":
        return False, cuda_home
    if setting == "1":
        if cuda_home is None:
            raise RuntimeError("LTH_SPARSE_CUDA=1 but no CUDA toolkit (nvcc) was found; set CUDA_HOME")
        return True, cuda_home
    return (cuda_home is not None and torch.version.cuda is not None and torch.cuda.is_available()), cuda_home


def _extensions():
    """The extensions to build, the build_ext to build them with, and the torch version they compile against
    (None where nothing is compiled)."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        _log(
            "torch is not importable at build time: installing without compiled kernels "
            "(install torch first and use `pip install --no-build-isolation -e .`)"
        )
        return [], {}, None

    exts = []
    if _compiler_works([]):
        openmp = _compiler_works(["-fopenmp"])
        # -g0 overrides the -g of Python's own flags: with debug information the extension is 21 MB, not 1 MB.
        cxx_flags = ["-O3", "-g0", "-std=c++20"] + (["-fopenmp", "-DLTH_SPARSE_OPENMP"] if openmp else [])
        exts.append(
            cpp_extension.CppExtension(
                "lth_sparse._C",
                sorted(glob.glob("csrc/cpu/*.cpp")),
                include_dirs=[os.path.join(ROOT, "csrc")],
                extra_compile_args={"cxx": cxx_flags},
                extra_link_args=["-fopenmp"] if openmp else [],
            )
        )
        _log(f"building the C++ CPU kernels (OpenMP: {'yes' if openmp else 'no'})")
    else:
        _log("no working C++ compiler: installing without compiled kernels (torch fallback)")
        return [], {}, None

    want_cuda, cuda_home = _want_cuda(torch)
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    if want_cuda and cuda_sources:
        # torch's helper reads CUDA_HOME once at import; it must point at the toolkit,
        # and the linker must find libcudart in the toolkit's lib folder.
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        libdirs = [
            d
            for d in (os.path.join(cuda_home, "lib"), os.path.join(cuda_home, "lib64"))
            if os.path.exists(os.path.join(d, "libcudart.so"))
        ]
        os.environ["LIBRARY_PATH"] = os.pathsep.join(
            libdirs + [p for p in os.environ.get("LIBRARY_PATH", "").split(os.pathsep) if p]
        )
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        exts.append(
            cpp_extension.CUDAExtension(
                "lth_sparse._cuda",
                cuda_sources,
                include_dirs=[os.path.join(ROOT, "csrc")],
                library_dirs=libdirs,
                extra_compile_args={
                    "cxx": ["-O3", "-g0", "-std=c++20"],
                    "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr"],
                },
            )
        )
        _log(f"building the CUDA kernels with {cuda_home} for arch {os.environ['TORCH_CUDA_ARCH_LIST']}")
    else:
        _log("skipping the CUDA kernels (LTH_SPARSE_CUDA=1 forces them)")
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    return exts, {"build_ext": build_ext}, torch.__version__


class _OptionalBuild:
    """Wraps build_ext so that a failed compile leaves a working torch-only install, and so that an editable
    install compiles into the clone's build folder, as a wheel build does, instead of a new temporary one."""

    @staticmethod
    def wrap(build_ext_cls):
        class OptionalBuildExt(build_ext_cls):
            def finalize_options(self):
                super().finalize_options()
                if getattr(self, "editable_mode", False):
                    # setuptools' own default for a non-editable build (`build` command): build/temp.<plat>-<tag>
                    self.build_temp = os.path.join(
                        ROOT, "build", f"temp.{self.plat_name}-{sys.implementation.cache_tag}"
                    )

            def build_extension(self, ext):
                try:
                    super().build_extension(ext)
                except Exception as exc:  # noqa: BLE001 - any compiler failure
                    if os.environ.get("LTH_SPARSE_CUDA") == "1" and ext.name.endswith("_cuda"):
                        raise
                    if os.environ.get("LTH_SPARSE_REQUIRE_CPP") == "1":
                        raise
                    _log(f"building {ext.name} failed ({exc}); the package will use the torch fallback")

        return OptionalBuildExt


def torch_requirement(torch_version: str | None) -> str:
    """The torch an install needs: the release of ``torch_version`` (the torch its kernels are compiled
    against; its local label such as ``+cu130`` dropped, so that the CPU and CUDA builds of that release both
    satisfy it), or ``TORCH_FLOOR`` where nothing is compiled (``None``)."""
    if torch_version is None:
        return TORCH_FLOOR
    return f"torch=={torch_version.split('+')[0]}"


ext_modules, cmdclass, compiled_against = _extensions()
if "build_ext" in cmdclass:
    cmdclass["build_ext"] = _OptionalBuild.wrap(cmdclass["build_ext"])
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[torch_requirement(compiled_against), *DEPENDENCIES],
)
