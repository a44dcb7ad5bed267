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
    proc = subprocess.run([sys.executable, "-m", "enclave", "models", "pull", NAME], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "134,515,008" in proc.stdout
    return home
