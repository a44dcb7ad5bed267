"""The compress steps on the real model: merge the tuned adapter, prune it, measure both."""

from __future__ import annotations

import pytest

from compress import registry
from compress.config import EvalSettings
from compress.merge.config import MergeSettings
from compress.prune.config import PruneSettings
from compress.report import report
from compress.settings import Calibration
from enclave.manifest import verify
from tests.integration.conftest import NAME

pytestmark = pytest.mark.slow


def test_merge_prune_report(store, tuned_adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("ENCLAVE_HOME", str(store))
    adapter, _ = tuned_adapter
    merged = registry.get("merge").run(NAME, MergeSettings(adapter=str(adapter)), tmp_path / "merged", "merged")
    m, problems = verify(merged)
    assert problems == [] and m.metrics["same_argmax"] and m.metrics["max_logit_diff"] < 1e-3
    cal = Calibration(source="builtin:clinical_legal", samples=16, seq_len=256)
    pruned = registry.get("prune").run(
        str(merged), PruneSettings(algorithm="wanda", sparsity=0.5, calibration=cal), tmp_path / "pruned", "pruned"
    )
    assert verify(pruned)[1] == []
    rows = report([str(merged), str(pruned)], EvalSettings(max_tokens=1024), tmp_path / "report", task_data=None)
    assert rows[0]["sparsity"] == 0.0 and rows[1]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert rows[0]["perplexity"] < rows[1]["perplexity"] < 20 * rows[0]["perplexity"]
    assert (tmp_path / "report" / "report.png").is_file()
