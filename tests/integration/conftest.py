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


@pytest.fixture(scope="session")
def tuned_adapter(store, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The demo recipe on SmolLM2, as `make demo` runs it (4 epochs, about 4 minutes; the test split's
    scores on 48 records), shared by the tune, compress, serve and feedback-loop tests. A trained
    adapter, not one epoch of it: the loop's gate checks what continued tuning forgets, which an
    adapter still far from its best would hide (more training only gains)."""
    env = {**os.environ, "ENCLAVE_HOME": str(store)}
    out = tmp_path_factory.mktemp("adapter") / "integration"
    args = [
        "eval.max_examples=48",
        f"output={out}",
        "name=integration",
        "--restart",
    ]
    cmd = [sys.executable, "-m", "enclave", "tune", "--config", "tune/recipes/clinical_legal.yaml", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="session")
def int4_onnx(store, tmp_path_factory) -> Path:
    """SmolLM2 exported to ONNX int4 with the real CLI (about a minute), shared by the serving tests."""
    out = tmp_path_factory.mktemp("int4") / "onnx"
    cmd = [sys.executable, "-m", "enclave", "compress", "export", "--model", NAME, "--format", "onnx"]
    proc = subprocess.run(
        [*cmd, "--precision", "int4", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "ENCLAVE_HOME": str(store)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out
