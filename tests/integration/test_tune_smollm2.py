"""One real tuning run on SmolLM2: the adapter must beat the base on the held-out test split."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from enclave.manifest import read_manifest, verify
from tests.integration.conftest import NAME

pytestmark = pytest.mark.slow


def test_tune_beats_base_and_eval_agrees(store, tuned_adapter, tmp_path):
    env = {**os.environ, "ENCLAVE_HOME": str(store)}
    out, proc = tuned_adapter
    assert "Evaluation on the test split" in proc.stdout and "Tuning run" in proc.stdout
    manifest, problems = verify(out)
    assert problems == []
    base_digest = read_manifest(store / "models" / NAME).digest
    assert manifest.parents[0].digest == base_digest and manifest.parents[0].role == "base"
    m = manifest.metrics
    base, tuned = m["eval_base"]["metrics"], m["eval_adapter"]["metrics"]
    assert tuned["token_f1"] > base["token_f1"] + 10, (base, tuned)
    assert tuned["perplexity"] < base["perplexity"] / 2
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == NAME

    # `enclave eval` on the adapter alone reproduces the run's own scores.
    report = tmp_path / "eval.md"
    cmd = [sys.executable, "-m", "enclave", "eval", str(out), "eval.max_examples=48", "--report", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report.read_text().startswith("# integration: test split of builtin:clinical_legal")
    recorded = [v for k, v in read_manifest(out).metrics.items() if k.startswith("eval:")]
    assert recorded and recorded[0]["metrics"]["token_f1"] == pytest.approx(tuned["token_f1"], abs=0.01)
    assert verify(out)[1] == []  # scores are added to the manifest without breaking verification
