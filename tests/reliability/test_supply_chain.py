"""Supply chain, read from the source: no pickle is ever loaded (weights are safetensors, any
torch.load passes weights_only=True), trust_remote_code is never switched on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["enclave", "tune", "compress", "serve"]


def sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "v1" not in path.parts:  # generated stubs
                yield path, ast.parse(path.read_text(), str(path))


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            base = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            yield name, base, {k.arg: k.value for k in node.keywords}


def test_no_pickle_and_no_remote_code(record):
    problems, torch_loads, files = [], 0, 0
    for path, tree in sources():
        files += 1
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                )
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "shelve") for n in names):
                    problems.append(f"{rel}:{node.lineno}: imports a pickle module")
        for name, base, kw in calls(tree):
            if name == "load" and base == "torch":
                torch_loads += 1
                value = kw.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{rel}: torch.load without weights_only=True")
            if name in ("load", "loads") and base in ("pickle", "np", "numpy") and base != "np":
                problems.append(f"{rel}: {base}.{name}")
            if (
                name == "load"
                and base in ("np", "numpy")
                and not (isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False)
            ):
                problems.append(f"{rel}: numpy.load without allow_pickle=False")
            value = kw.get("trust_remote_code")
            if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                problems.append(f"{rel}: trust_remote_code is not the constant False")
    record({"files_checked": files, "torch_load_calls": torch_loads, "problems": problems})
    assert not problems, "\n".join(problems)
    assert files > 50


def test_the_checker_catches_what_it_looks_for(tmp_path):
    bad = ast.parse(
        "import pickle\nimport torch\ntorch.load(f)\nAutoModel.from_pretrained(p, trust_remote_code=True)\n"
    )
    found = [name for name, base, kw in calls(bad)]
    assert "load" in found and "from_pretrained" in found
    kw = dict((n, k) for n, b, k in calls(bad))
    assert kw["from_pretrained"]["trust_remote_code"].value is True and "weights_only" not in kw["load"]
