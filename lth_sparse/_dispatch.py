"""Backend choice for every op: one small function, read at call time.

docs/design.md fixes the order. For tensors on CUDA: the compiled CUDA extension,
then Triton, then torch. For tensors on the CPU: the compiled C++ extension,
then torch (and Triton under ``TRITON_INTERPRET=1``, but only when forced: the
interpreter is a test vehicle, never a fast path). ``LTH_SPARSE_BACKEND`` forces
one backend; a forced backend that cannot run the op here is a ``RuntimeError``
that names it and says why, never a silent fallback.

GPU kernels (CUDA or Triton) that have not yet passed their tests on a GPU stay
opt-in: ``auto`` skips them (see ``_GPU_VERIFIED``) and ``backend_info()`` says so.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from collections.abc import Callable, Mapping

import torch

from lth_sparse._version import __version__

BACKENDS = ("auto", "cuda", "triton", "cpp", "torch")

# (op, backend) pairs whose GPU kernels have passed their tests on a GPU, so ``auto`` may pick them.
_GPU_VERIFIED: frozenset[tuple[str, str]] = frozenset()


# os.environ's own store and key, read without the KeyError that os.environ.get raises and catches
# inside for a missing variable (~2 us, as much as the rest of a small layer's dispatch).
_ENVIRON_DATA = getattr(os.environ, "_data", None)
_BACKEND_KEY = os.environ.encodekey("LTH_SPARSE_BACKEND") if hasattr(os.environ, "encodekey") else None


def _backend_variable() -> str | None:
    """``os.environ.get("LTH_SPARSE_BACKEND")``, fast when it is not set."""
    if _ENVIRON_DATA is None or _BACKEND_KEY is None:
        return os.environ.get("LTH_SPARSE_BACKEND")
    if _BACKEND_KEY not in _ENVIRON_DATA:
        return None
    return os.environ.get("LTH_SPARSE_BACKEND")


def backend_setting() -> str:
    """The value of ``LTH_SPARSE_BACKEND`` (default ``auto``), validated; read at every call."""
    value = (_backend_variable() or "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"LTH_SPARSE_BACKEND must be one of {', '.join(BACKENDS)}, got {value!r}")
    return value


@functools.cache
def _load_extension(name: str):
    """Import ``lth_sparse.<name>``; returns (module or None, reason it is missing)."""
    try:
        return importlib.import_module(f"lth_sparse.{name}"), None
    except ImportError as exc:
        return None, f"lth_sparse.{name} is not built ({exc})"


def cpp_extension():
    """The compiled C++ CPU extension, or None when it was not built."""
    return _load_extension("_C")[0]


def cuda_extension():
    """The compiled CUDA extension, or None when it was not built."""
    return _load_extension("_cuda")[0]


@functools.cache
def _triton_importable() -> tuple[bool, str | None]:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return False, f"triton is not installed ({exc})"
    return True, None


def triton_kernel(module: str, name: str):
    """A launcher for ``lth_sparse.kernels.<module>.<name>`` that imports Triton only when first called."""

    def launch(*args):
        kernels = importlib.import_module(f"lth_sparse.kernels.{module}")
        return getattr(kernels, name)(*args)

    launch.__name__ = name
    return launch


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend_status(backend: str, device: torch.device) -> tuple[bool, str | None]:
    """Whether ``backend`` can run on ``device`` here, and if not, why."""
    if backend == "torch":
        return True, None
    if backend == "cpp":
        if device.type != "cpu":
            return False, f"the C++ backend runs on CPU tensors, these are on {device}"
        return (True, None) if cpp_extension() is not None else (False, _load_extension("_C")[1])
    if backend == "cuda":
        if device.type != "cuda":
            return False, f"the CUDA backend runs on CUDA tensors, these are on {device}"
        return (True, None) if cuda_extension() is not None else (False, _load_extension("_cuda")[1])
    if backend == "triton":
        ok, why = _triton_importable()
        if not ok:
            return ok, why
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreting()):
            return True, None
        return False, f"Triton runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1; these are on {device}"
    raise ValueError(f"unknown backend {backend!r}")


def choose_backend(op: str, device: torch.device, implemented: tuple[str, ...]) -> str:
    """The backend to run ``op`` with on ``device``.

    ``implemented`` lists the backends that have a kernel for ``op`` (``torch``
    always). With ``auto`` the first usable one in docs/design.md's order is taken.
    """
    setting = backend_setting()
    if setting != "auto":
        refusal = _forced_backend_refusal(setting, op, device, implemented)
        if refusal is not None:
            raise RuntimeError(refusal)
        return setting
    order = ("cuda", "triton", "torch") if device.type == "cuda" else ("cpp", "torch")
    for backend in order:
        if backend not in implemented:
            continue
        if backend in ("cuda", "triton") and (op, backend) not in _GPU_VERIFIED:
            continue
        if backend_status(backend, device)[0]:
            return backend
    return "torch"


def _forced_backend_refusal(setting: str, op: str, device: torch.device, implemented: tuple[str, ...]) -> str | None:
    """Why the forced backend ``setting`` cannot run ``op`` on ``device`` (it has no kernel for the op, or cannot run
    there), or None where it can."""
    if setting not in implemented:
        return (
            f"LTH_SPARSE_BACKEND={setting}: op {op} has no {setting} kernel "
            f"(it has: {', '.join(implemented)}); use LTH_SPARSE_BACKEND=auto"
        )
    ok, why = backend_status(setting, device)
    if not ok:
        return f"LTH_SPARSE_BACKEND={setting} cannot run {op}: {why}"
    return None


def check_backend(device: torch.device, ops: Mapping[str, tuple[str, ...]]) -> str:
    """The ``LTH_SPARSE_BACKEND`` setting, judged before work on ``device`` that runs ``ops`` (op -> the backends
    with a kernel for it), so that a setting that cannot serve it is refused before the work starts, not at the
    first op: a ``ValueError`` where the value is not one of :data:`BACKENDS`, or forces a backend that lacks a
    kernel for one of ``ops`` or cannot run on ``device`` (what :func:`choose_backend` would raise), the
    accepted values listed."""
    setting = backend_setting()
    if setting != "auto":
        for op, implemented in ops.items():
            refusal = _forced_backend_refusal(setting, op, device, implemented)
            if refusal is not None:
                raise ValueError(f"{refusal} (the values of LTH_SPARSE_BACKEND: {', '.join(BACKENDS)})")
    return setting


def cpu_runs_cpp() -> bool:
    """Whether an op on CPU tensors runs the C++ backend: it is built, and ``LTH_SPARSE_BACKEND`` is
    ``auto`` or ``cpp``; what ``choose_backend`` answers for the CPU, in a fraction of its time."""
    return (_backend_variable() is None or backend_setting() in ("auto", "cpp")) and cpp_extension() is not None


def plain_eager() -> bool:
    """True when an op may skip the ``torch.library`` custom-op machinery and run as a plain autograd Function.

    That machinery costs about 90 us per forward+backward on the CPU, as much as
    the whole product of a LeNet layer. It is needed under ``torch.compile``, a
    dispatch mode (fake tensors, tracing) and functorch transforms; in plain
    eager mode the Function runs the same kernels with the same checks.
    """
    return not (
        torch.compiler.is_compiling()
        or torch._C._len_torch_dispatch_stack()
        or torch._C._are_functorch_transforms_active()
    )


# What the op layer adds to backend_info() where the C++ extension is built, key -> report(): the op
# layer registers it when imported (lth_sparse imports it), so that this module, below it, never
# imports it back.
_CPP_REPORTS: dict[str, Callable[[], object]] = {}


def register_cpp_report(key: str, report: Callable[[], object]) -> None:
    """Have :func:`backend_info` include ``key: report()`` where the C++ extension is built (called by
    the op layer at import: ``lth_sparse.ops._cpu`` registers ``cpu_sparse_policy``)."""
    _CPP_REPORTS[key] = report


_warned_torch_only = False


def warn_if_torch_only() -> None:
    """Say once, at import, that no compiled kernels are available."""
    global _warned_torch_only
    if not _warned_torch_only and cpp_extension() is None:
        _warned_torch_only = True
        warnings.warn(
            "lth_sparse was installed without its compiled kernels "
            f"({_load_extension('_C')[1]}); every op runs on the torch fallback. "
            "Reinstall with a C++ compiler: pip install --no-build-isolation -e .",
            RuntimeWarning,
            stacklevel=3,
        )


def backend_info() -> dict:
    """What was built and what is active here.

    Keys: ``version``, ``torch``, ``cpp``, ``cuda``, ``triton`` (bools: built and
    usable here), ``backend`` (the setting in force), ``gpu_auto`` ("op:backend" GPU
    kernels that ``auto`` uses; the others are opt-in until verified on a GPU),
    ``reasons`` (why a backend is unusable); where the C++ extension is built, ``cpp_kernel_info``
    (threads, SIMD, select parameters) and ``cpu_sparse_policy`` (when the CPU masked layers take
    their sparse path: ``lth_sparse.ops._cpu.policy()``, registered by the op layer through
    :func:`register_cpp_report`; linear layers at density at most
    ``max_density``, ``gemv_max_density`` at batch 1, any density for at most ``small_dense_work``
    multiply-adds over ``small_min_columns`` rows or more; convs at ``conv_max_density``, never
    when None; always at least ``min_dense_work`` multiply-adds).
    """
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    cpp_ok, cpp_why = backend_status("cpp", cpu)
    cuda_built = cuda_extension() is not None
    cuda_ok = cuda_built and torch.cuda.is_available()
    triton_ok, triton_why = _triton_importable()
    triton_ok = triton_ok and (torch.cuda.is_available() or triton_interpreting())
    reasons = {}
    if not cpp_ok:
        reasons["cpp"] = cpp_why
    if not cuda_ok:
        reasons["cuda"] = _load_extension("_cuda")[1] if not cuda_built else "built, but torch sees no CUDA device"
    if not triton_ok:
        reasons["triton"] = triton_why or "no CUDA device and TRITON_INTERPRET is not 1"
    info = {
        "version": __version__,
        "torch": torch.__version__,
        "cpp": cpp_ok,
        "cuda": cuda_ok,
        "triton": triton_ok,
        "backend": backend_setting(),
        "gpu_auto": sorted(f"{op}:{backend}" for op, backend in _GPU_VERIFIED),
        "reasons": reasons,
    }
    if cpp_ok:
        info["cpp_kernel_info"] = dict(cpp_extension().kernel_info())
        info.update((key, report()) for key, report in _CPP_REPORTS.items())
    if cuda_ok:
        info["gpu"] = torch.cuda.get_device_name(gpu)
    return info
