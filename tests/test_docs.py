"""The documentation: its Python snippets run as written (in a scratch folder) and do what their comments say, the
README's relative links point to files of the repository, and the MkDocs site builds with no warning."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
API_GUIDE = ROOT / "docs" / "api" / "index.md"


def python_block(page: Path, after: str) -> str:
    """The first ```python block of ``page`` after the text ``after``."""
    text = page.read_text()
    section = text[text.index(after) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"{page.name} has a python block after {after!r}"
    return match.group(1)


def run_snippet(page: Path, after: str) -> dict:
    namespace: dict = {}
    code = python_block(page, after)
    exec(compile(code, f"{page.relative_to(ROOT)} ({after})", "exec"), namespace)  # noqa: S102 (the docs' own code)
    return namespace


def check_pruned_model(namespace: dict, folder: Path) -> None:
    """What the masking lines' comments promise, checked on the objects the snippet made."""
    model, masks = namespace["model"], namespace["masks"]
    assert abs(masks.sparsity() - 0.2) < 1e-3
    for module in model.modules():
        if hasattr(module, "mask"):
            assert torch.equal(module.weight[~module.mask], torch.zeros_like(module.weight[~module.mask]))
    assert (folder / "masks.safetensors").is_file()


def test_the_readme_python_api_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    check_pruned_model(run_snippet(README, "## Python API"), tmp_path)


def test_the_python_api_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = run_snippet(API_GUIDE, "## A first example")
    check_pruned_model(namespace, tmp_path)
    x, w_a, w_b, path = namespace["x"], namespace["w_a"], namespace["w_b"], namespace["path"]
    assert path.shape == (21, 32, 300)
    torch.testing.assert_close(path[0], x @ w_a.T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(path[-1], x @ w_b.T, rtol=1e-4, atol=1e-4)
    keep, scores = namespace["keep"], namespace["scores"]
    assert sum(int((~k).sum()) for k in keep) == 1000
    threshold = namespace["threshold"]
    assert int(sum((s <= threshold).sum() for s in scores)) >= 1000


def test_the_mask_analysis_snippet_runs_and_independent_masks_meet_the_expectation():
    namespace = run_snippet(API_GUIDE, "## Mask analysis")
    a, b = namespace["a"], namespace["b"]
    measured = namespace["jaccard_distance"](a, b)
    assert abs(measured - namespace["expected_jaccard_distance"](0.64, 0.64)) < 0.005
    assert round(namespace["expected_jaccard_distance"](0.64, 0.64), 2) == 0.53


def test_every_relative_link_of_the_readme_points_to_a_file():
    text = re.sub(r"```.*?```", "", README.read_text(), flags=re.DOTALL)  # code blocks hold no links
    targets = re.findall(r"\]\(([^)\s]+)", text)
    relative = [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]
    assert relative, "the README links its documentation"
    missing = [t for t in relative if not (ROOT / t.split("#", 1)[0]).is_file()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_the_docs_site_builds_strictly(tmp_path):
    missing = [
        name
        for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        pytest.skip(
            f"the docs extra is not installed (no {', '.join(missing)}): pip install --no-build-isolation -e '.[docs]'"
        )
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    site = tmp_path / "site"
    assert (site / "cli" / "index.html").read_text().count("usage: lth-sparse") >= 2, "the CLI reference is generated"
    assert (site / "results" / "imp-lenet300-fashion-mnist-3seeds" / "plots" / "accuracy_vs_remaining.png").is_file()
