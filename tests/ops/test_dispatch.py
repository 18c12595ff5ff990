import ast
from pathlib import Path

import pytest
import torch

import lth_sparse
from lth_sparse import _dispatch
from lth_sparse.ops import interpolated_linear, kth_smallest


def test_backend_info_reports_what_is_built():
    info = lth_sparse.backend_info()
    for key in ("version", "torch", "cpp", "cuda", "triton", "backend"):
        assert key in info
    assert info["version"] == lth_sparse.__version__
    assert info["torch"] == torch.__version__
    assert info["cpp"] == (_dispatch.cpp_extension() is not None)
    assert info["cuda"] is (torch.cuda.is_available() and _dispatch.cuda_extension() is not None)
    assert info["backend"] == "auto"


def test_backend_setting_is_read_at_call_time(use_backend):
    use_backend("torch")
    assert lth_sparse.backend_info()["backend"] == "torch"
    assert _dispatch.choose_backend("kth_smallest", torch.device("cpu"), ("cpp", "torch")) == "torch"


def test_unknown_backend_setting_is_an_error(use_backend):
    use_backend("fastest")
    with pytest.raises(ValueError, match="LTH_SPARSE_BACKEND must be one of"):
        kth_smallest([torch.randn(3)], 1)


def test_forced_cuda_on_cpu_tensors_is_an_error_not_a_fallback(use_backend):
    use_backend("cuda")
    with pytest.raises(RuntimeError, match="LTH_SPARSE_BACKEND=cuda cannot run kth_smallest"):
        kth_smallest([torch.randn(3)], 1)


def test_forced_backend_without_a_kernel_for_the_op_is_an_error(use_backend):
    use_backend("cuda")
    with pytest.raises(RuntimeError, match="has no cuda kernel"):
        interpolated_linear(torch.randn(1, 2, 3), torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0.5]))


def test_check_backend_judges_the_setting_before_any_op_runs(use_backend, monkeypatch):
    """What choose_backend would raise at an op's first call, as a ValueError listing the values, before the work."""
    cpu, ops = torch.device("cpu"), {"masked_linear": ("triton", "cpp", "torch")}
    assert _dispatch.check_backend(cpu, ops) == "auto"
    use_backend("torch")
    assert _dispatch.check_backend(cpu, ops) == "torch"
    use_backend("fastest")
    with pytest.raises(ValueError, match="LTH_SPARSE_BACKEND must be one of auto, cuda, triton, cpp, torch"):
        _dispatch.check_backend(cpu, ops)
    use_backend("cuda")
    with pytest.raises(ValueError, match=r"op masked_linear has no cuda kernel.*auto, cuda, triton, cpp, torch"):
        _dispatch.check_backend(cpu, ops)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("LTH_SPARSE_BACKEND", "triton")
    with pytest.raises(ValueError, match="LTH_SPARSE_BACKEND=triton cannot run masked_linear"):
        _dispatch.check_backend(cpu, ops)


def test_forced_triton_on_cpu_without_interpreter_is_an_error(use_backend, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, why = _dispatch.backend_status("triton", torch.device("cpu"))
    assert not ok and "TRITON_INTERPRET" in why


def test_auto_uses_cpp_on_cpu_when_built():
    expected = "cpp" if _dispatch.cpp_extension() is not None else "torch"
    assert _dispatch.choose_backend("kth_smallest", torch.device("cpu"), ("cuda", "cpp", "torch")) == expected


def test_auto_skips_unverified_cuda_kernels():
    assert _dispatch.choose_backend("kth_smallest", torch.device("cuda"), ("cuda", "torch")) == "torch"


def test_missing_cpp_extension_is_reported(monkeypatch, use_backend):
    monkeypatch.setitem(
        _dispatch._load_extension.__wrapped__.__globals__,
        "_load_extension",
        lambda name: (None, f"lth_sparse.{name} is not built (test)"),
    )
    use_backend("cpp")
    with pytest.raises(RuntimeError, match="not built"):
        kth_smallest([torch.randn(3)], 1)
    assert lth_sparse.backend_info()["cpp"] is False


@pytest.mark.skipif(
    __import__("os").environ.get("LTH_SPARSE_REQUIRE_CPP") != "1", reason="only where the C++ build is required (CI)"
)
def test_cpp_extension_is_built_where_required():
    info = lth_sparse.backend_info()
    assert info["cpp"], info["reasons"].get("cpp")


def test_backend_info_reports_the_cpu_sparse_policy():
    from lth_sparse.ops import _cpu

    info = lth_sparse.backend_info()
    if not info["cpp"]:
        pytest.skip("the C++ extension is not built")
    assert info["cpu_sparse_policy"] == _cpu.policy()
    assert info["cpu_sparse_policy"]["max_density"] == _cpu.MAX_DENSITY
    assert info["cpp_kernel_info"]["masked_simd"] in ("avx2+fma", "portable")


def test_dispatch_imports_nothing_from_the_layers_above_it():
    """The ops import _dispatch; it reaches them only through what they register (register_cpp_report)."""
    tree = ast.parse(Path(_dispatch.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    ours = {name for name in imported if name and name.split(".")[0] == "lth_sparse"}
    assert ours == {"lth_sparse._version"}, f"_dispatch imports {sorted(ours)}"
