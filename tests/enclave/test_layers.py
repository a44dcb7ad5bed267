"""The layering rule, read from the source: the stages (tune, compress, serve) never import each
other, and the shared layer (enclave) imports a stage only from its CLI modules (enclave/cli),
which are thin wrappers over the stages. Stages meet through artifacts on disk.

Every import counts, also one inside a function and a module name handed to
``importlib.import_module`` as a string constant.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("tune", "compress", "serve")
SHARED = "enclave"


def imported(tree: ast.AST):
    """(line, module) of every import in a module, string ones to ``import_module`` included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def allowed(package: str, path: Path, root: Path) -> set[str]:
    """The stages a module of ``package`` may import."""
    if package in STAGES:
        return {package}
    if path.relative_to(root / SHARED).parts[0] == "cli":
        return set(STAGES)
    return set()


def violations(root: Path = ROOT) -> list[str]:
    problems = []
    for package in (*STAGES, SHARED):
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for line, module in imported(tree):
                top = module.split(".")[0]
                if top in STAGES and top not in allowed(package, path, root):
                    problems.append(f"{path.relative_to(root)}:{line}: imports {module}")
    return problems


def test_stages_meet_only_through_the_shared_layer():
    problems = violations()
    assert not problems, (
        "layering rule broken (stages meet through artifacts and enclave/, see ARCHITECTURE.md):\n"
        + "\n".join(problems)
    )


def test_the_check_sees_every_kind_of_import(tmp_path):
    for package in (*STAGES, SHARED):
        (tmp_path / package / "cli").mkdir(parents=True)
    (tmp_path / "serve" / "a.py").write_text("def f():\n    from tune.run import run\n")
    (tmp_path / "compress" / "b.py").write_text("import importlib\nimportlib.import_module('serve.models')\n")
    (tmp_path / "enclave" / "c.py").write_text("import compress.report\n")
    (tmp_path / "enclave" / "cli" / "d.py").write_text("from serve.server import serve\n")  # allowed: a CLI module
    (tmp_path / "tune" / "e.py").write_text(
        "from tune.config import TuneConfig\nfrom enclave.store import home\n"
    )  # allowed
    assert violations(tmp_path) == [
        "compress/b.py:2: imports serve.models",
        "serve/a.py:2: imports tune.run",
        "enclave/c.py:1: imports compress.report",
    ]
