"""The packaging that a release relies on, checked without compiling: the version is stated once per place and
agrees, the metadata pins the torch that compiled kernels are built against, and the sdist carries every C++ and
CUDA source and header. The wheel itself (built, repaired, installed without a compiler, smoke-tested) is
`tools/check_wheel.sh`'s, docs/release.md."""

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import lth_sparse

ROOT = Path(__file__).resolve().parents[1]

# What the build backend reads from the source tree: the build files, the package's Python and the C++/CUDA
# sources (the package's compiled files, caches and the rest of the repository stay behind).
BUILD_FILES = ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md")

# Runs a PEP 517 hook of the build backend, as pip and `python -m build` do before compiling, each in a process of
# its own (setuptools' hooks leave state behind that misplaces a second hook's output).
HOOK = """
import sys
from setuptools import build_meta
print(getattr(build_meta, sys.argv[1])(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A copy of the source tree, the backend's metadata and sdist of it, and setup.py's log."""
    src = tmp_path_factory.mktemp("src")
    out = tmp_path_factory.mktemp("out")
    for name in BUILD_FILES:
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "csrc", src / "csrc")
    shutil.copytree(ROOT / "lth_sparse", src / "lth_sparse", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    log = ""
    built = {}
    for hook in ("prepare_metadata_for_build_wheel", "build_sdist"):
        done = subprocess.run(
            [sys.executable, "-c", HOOK, hook, str(out)], cwd=src, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        built[hook] = out / done.stdout.splitlines()[-1]
        log += done.stderr
    metadata = (built["prepare_metadata_for_build_wheel"] / "METADATA").read_text()
    return metadata, built["build_sdist"], log


def test_the_version_is_the_same_in_pyproject_and_the_package():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == lth_sparse.__version__


def test_the_metadata_pins_the_torch_the_kernels_compile_against(built):
    metadata, _, log = built
    requirements = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    torch_requirements = [r for r in requirements if re.match(r"torch\b", r) and "extra ==" not in r]
    if "building the C++ CPU kernels" in log:
        release = torch.__version__.split("+")[0]
        assert torch_requirements == [f"torch=={release}"], log
    else:  # no compiler here: nothing compiled, nothing to pin
        assert torch_requirements == ["torch>=2.4"], log
    for dependency in ("numpy", "safetensors>=0.4", "tqdm", "matplotlib", "pyyaml"):
        assert dependency in requirements


def test_the_sdist_carries_every_source_and_header(built):
    _, sdist, _ = built
    with tarfile.open(sdist) as tar:
        members = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    sources = {
        str(path.relative_to(ROOT)) for path in (ROOT / "csrc").rglob("*") if path.suffix in (".h", ".cpp", ".cu")
    }
    assert any(name.endswith(".h") for name in sources)
    assert sources <= members, f"missing from the sdist: {sorted(sources - members)}"
    packages = {str(path.relative_to(ROOT)) for path in (ROOT / "lth_sparse").rglob("*.py")}
    assert packages <= members, f"missing from the sdist: {sorted(packages - members)}"
    assert not [name for name in members if name.endswith(".so")], "a compiled file in the sdist"
