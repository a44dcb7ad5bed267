"""The real model store for end-to-end tests, pulled once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """A store holding SmolLM2, pulled with the real CLI (ENCLAVE_TEST_HOME reuses one)."""
    home = Path(os.environ.get("ENCLAVE_TEST_HOME") or tmp_path_factory.mktemp("store"))
    env = {**os.environ, "ENCLAVE_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "enclave", "models", "pull", NAME], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "134,515,008" in proc.stdout
    return home


def cli(store: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `enclave ARGS` on the test store; it must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", "enclave", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "ENCLAVE_HOME": str(store)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def export_onnx(store: Path, precision: str, out: Path) -> Path:
    """SmolLM2 exported to ONNX at ``precision`` with the real CLI."""
    cli(store, "compress", "export", "--model", NAME, "--format", "onnx", "--precision", precision, "--out", str(out))
    return out


@pytest.fixture(scope="session")
def tuned_adapter(store, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The demo recipe on SmolLM2, as `make demo` runs it (4 epochs, about 4 minutes; the test split's
    scores on 48 records), shared by the tune, compress, serve and feedback-loop tests. A trained
    adapter, not one epoch of it: the loop's gate checks what continued tuning forgets, which an
    adapter still far from its best would hide (more training only gains)."""
    out = tmp_path_factory.mktemp("adapter") / "integration"
    recipe = ["--config", "tune/recipes/clinical_legal.yaml", "eval.max_examples=48", f"output={out}"]
    return out, cli(store, "tune", *recipe, "name=integration", "--restart")


@pytest.fixture(scope="session")
def int4_onnx(store, tmp_path_factory) -> Path:
    """SmolLM2 exported to ONNX int4 (about a minute), shared by the serving and feedback-loop tests."""
    return export_onnx(store, "int4", tmp_path_factory.mktemp("int4") / "onnx")
