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
def quick_adapter(store, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One epoch of the demo recipe on SmolLM2 (about 2 minutes), shared by the tune and compress tests."""
    env = {**os.environ, "ENCLAVE_HOME": str(store)}
    out = tmp_path_factory.mktemp("adapter") / "integration"
    quick = [
        "train.epochs=1",
        "train.eval_every=11",
        "eval.max_examples=48",
        f"output={out}",
        "name=integration",
        "--restart",
    ]
    cmd = [sys.executable, "-m", "enclave", "tune", "--config", "tune/recipes/clinical_legal.yaml", *quick]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc
