"""Shared test fixtures: the backends available on this machine, and a clean backend setting."""

from __future__ import annotations

import os
import socket

import torch

# Without a GPU, Triton kernels run on CPU tensors under its interpreter: that is how they are tested here.
# Triton reads this when the kernels are defined, so it is set before anything imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from lth_sparse._dispatch import backend_status  # noqa: E402


def available_backends(implemented: tuple[str, ...], device: str = "cpu") -> list[str]:
    """The backends of an op that can run on ``device`` here (torch always)."""
    dev = torch.device(device)
    return [b for b in implemented if backend_status(b, dev)[0]]


@pytest.fixture(autouse=True)
def _default_backend(monkeypatch):
    """Every test starts from LTH_SPARSE_BACKEND=auto unless it sets it itself."""
    monkeypatch.delenv("LTH_SPARSE_BACKEND", raising=False)
    yield


def backend_variants(implemented: tuple[str, ...], device: str = "cpu") -> list[str]:
    """``available_backends``, plus ``cpp-sparse`` (the C++ backend held on its sparse path) where cpp runs."""
    backends = available_backends(implemented, device)
    return [v for b in backends for v in ((b, "cpp-sparse") if b == "cpp" else (b,))]


@pytest.fixture
def use_backend(monkeypatch, request):
    """``use_backend("cpp")`` forces a backend for the rest of the test.

    ``cpp-sparse`` forces the C++ backend and its sparse path (CSR/CSC kernels)
    whatever the layer's size and density (float32/float64; other dtypes stay dense).
    """

    def set_backend(name: str) -> None:
        if name == "cpp-sparse":
            from lth_sparse.ops import _cpu

            held = _cpu.held_on("sparse")
            held.__enter__()
            request.addfinalizer(lambda: held.__exit__(None, None, None))
            name = "cpp"
        monkeypatch.setenv("LTH_SPARSE_BACKEND", name)

    return set_backend


@pytest.fixture(params=["compile", "ddp", "ddp-of-compile", "compile-of-ddp"])
def wrap(request):
    """``wrap(model)``: ``model`` inside real wrappers that prefix its parameter names (``_orig_mod.``, ``module.``).

    ``torch.compile`` wraps lazily (nothing is compiled unless the wrapper runs); DDP runs
    on a gloo process group of world size 1 on this machine, destroyed after the test.
    """
    import torch.distributed as dist

    def ddp(model):
        if not (dist.is_available() and dist.is_gloo_available()):
            pytest.skip("torch.distributed with gloo is not available")
        if not dist.is_initialized():
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
            request.addfinalizer(dist.destroy_process_group)
        return torch.nn.parallel.DistributedDataParallel(model)

    return {
        "compile": lambda m: torch.compile(m),
        "ddp": ddp,
        "ddp-of-compile": lambda m: ddp(torch.compile(m)),
        "compile-of-ddp": lambda m: torch.compile(ddp(m)),
    }[request.param]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


os.environ.setdefault("PYTHONHASHSEED", "0")

# Test tensors are tiny: one thread avoids OpenMP's spin-waits, which cost far more than they
# gain here, and a lot on a loaded machine. OMP_NUM_THREADS is what the pipelines' default
# thread count (lth_sparse.executors.default_threads) reads, so their runs use one thread too,
# whatever the machine's load, and give the same numbers run after run.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
