"""The README's Python API snippet runs as written (in a scratch folder) and does what its comments say."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_snippet() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the Python API section has a python block"
    return match.group(1)


def test_the_python_api_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(python_api_snippet(), "README.md (Python API)", "exec"), namespace)
    # What the comments promise, checked on the objects the snippet made.
    model, masks = namespace["model"], namespace["masks"]
    assert abs(masks.sparsity() - 0.2) < 1e-3
    for name, module in model.named_modules():
        if hasattr(module, "mask"):
            assert torch.equal(module.weight[~module.mask], torch.zeros_like(module.weight[~module.mask]))
    assert (tmp_path / "masks.safetensors").is_file()
    x, w_a, w_b, path = namespace["x"], namespace["w_a"], namespace["w_b"], namespace["path"]
    assert path.shape == (21, 32, 300)
    torch.testing.assert_close(path[0], x @ w_a.T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(path[-1], x @ w_b.T, rtol=1e-4, atol=1e-4)
    keep, scores = namespace["keep"], namespace["scores"]
    assert sum(int((~k).sum()) for k in keep) == 1000
    threshold = namespace["threshold"]
    assert int(sum((s <= threshold).sum() for s in scores)) >= 1000


def test_the_mask_analysis_snippet_runs_and_independent_masks_meet_the_expectation():
    text = README.read_text()
    section = text[text.index("**Mask analysis**"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md (mask analysis)", "exec"), namespace)
    a, b = namespace["a"], namespace["b"]
    measured = namespace["jaccard_distance"](a, b)
    assert abs(measured - namespace["expected_jaccard_distance"](0.64, 0.64)) < 0.005
    assert round(namespace["expected_jaccard_distance"](0.64, 0.64), 2) == 0.53
