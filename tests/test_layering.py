"""The package's layering (docs/design.md): import-linter's contracts hold, and no module imports another's
private names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lth_sparse"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_imports(path: Path, source: str | None = None) -> list[str]:
    """``from M import _name`` in ``path`` where ``M`` is another module of the package (a private *module* of
    the importer's own package, ``from lth_sparse.ops import _checks``, is the package's own business)."""
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            module = ".".join([*base, node.module])
        else:
            module = node.module
        if not module.startswith("lth_sparse") or module == importer:
            continue
        for alias in node.names:
            name = alias.name
            if not name.startswith("_") or name.startswith("__"):
                continue
            if module == package and (PACKAGE.parent / (module.replace(".", "/") + f"/{name}.py")).exists():
                continue  # a private module of the importer's own package
            found.append(f"{importer}: from {module} import {name}")
    return found


def test_no_module_imports_another_modules_private_names():
    found = [line for path in sorted(PACKAGE.rglob("*.py")) for line in private_imports(path)]
    assert found == []


def test_the_private_name_check_sees_one_and_allows_a_private_module_of_the_own_package():
    source = "from lth_sparse.pipelines.imp import _Hidden\nfrom lth_sparse.ops import _checks\n"
    assert private_imports(PACKAGE / "ops" / "select.py", source) == [
        "lth_sparse.ops.select: from lth_sparse.pipelines.imp import _Hidden"
    ]
    assert private_imports(PACKAGE / "pipelines" / "plant.py", source) == [
        "lth_sparse.pipelines.plant: from lth_sparse.pipelines.imp import _Hidden",
        "lth_sparse.pipelines.plant: from lth_sparse.ops import _checks",
    ]


@pytest.mark.skipif(
    shutil.which("lint-imports") is None, reason="import-linter is not installed (pip install 'lth_sparse[lint]')"
)
def test_the_import_linter_contracts_are_kept():
    result = subprocess.run([shutil.which("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_import_linter_contracts_catch_an_upward_import(tmp_path):
    """The layers contract is not vacuous: a copy of the package where a block imports a pipeline breaks it."""
    if shutil.which("lint-imports") is None:
        pytest.skip("import-linter is not installed")
    shutil.copytree(PACKAGE, tmp_path / "lth_sparse", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    runs = tmp_path / "lth_sparse" / "runs.py"
    runs.write_text(runs.read_text() + "\nfrom lth_sparse.pipelines import base  # noqa\n")
    env_path = f"{tmp_path}"
    result = subprocess.run(
        [shutil.which("lint-imports"), "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": str(Path(sys.executable).parent)},
    )
    assert result.returncode != 0 and "lth_sparse.runs -> lth_sparse.pipelines" in result.stdout
