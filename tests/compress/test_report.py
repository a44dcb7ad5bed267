"""`enclave compress report` scores every artifact's task in process with the shared evaluation:
the same numbers for the same weights on torch and on onnxruntime, and per-group scores for each."""

from __future__ import annotations

import pytest

from compress.config import EvalSettings
from compress.report import report


def test_task_scores_per_group_for_every_artifact_and_engine(tiny_wide_checkpoint, facts_file, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    from compress import registry
    from compress.export.config import ExportSettings

    onnx = registry.get("export").run(
        str(tiny_wide_checkpoint), ExportSettings(precision="fp32", check_tokens=4), tmp_path / "onnx", "o"
    )
    rows = report(
        [str(tiny_wide_checkpoint), str(onnx)],
        EvalSettings(max_tokens=100),
        tmp_path / "report",
        task_data=str(facts_file),
    )
    torch_row, onnx_row = rows
    assert onnx_row["engine"] == "ort-genai" and torch_row["engine"] == "torch"
    for key in ("task_exact_match", "task_token_f1"):  # fp32 weights: the same answers whichever engine runs them
        assert onnx_row[key] == pytest.approx(torch_row[key])
    assert set(torch_row["task_per_group"]) == set(onnx_row["task_per_group"]) == {"clinical", "legal"}
    for group, scores in torch_row["task_per_group"].items():
        assert onnx_row["task_per_group"][group] == pytest.approx(scores)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Task scores by group (test split)" in md and "clinical EM" in md and "largest F1 gap" in md


def test_share_of_tuning_gain_kept_per_artifact():
    """From the base (first row) to the tuned model (first merged row): what each later artifact keeps."""
    from compress.report import add_gain_kept, markdown

    def row(name, kind, em, f1):
        return {
            "name": name,
            "kind": kind,
            "task_exact_match": em,
            "task_token_f1": f1,
            "size_bytes": 1e6,
            "perplexity": 20.0,
        }

    rows = [
        row("base", "model", 10.0, 30.0),
        row("m", "merged", 90.0, 80.0),
        row("q", "quantized", 86.0, 70.0),
        row("o", "onnx", 50.0, 80.0),
    ]
    add_gain_kept(rows)
    assert "gain_kept_exact_match" not in rows[0]
    assert [r["gain_kept_exact_match"] for r in rows[1:]] == pytest.approx([1.0, 0.95, 0.5])
    assert [r["gain_kept_token_f1"] for r in rows[1:]] == pytest.approx([1.0, 0.8, 1.0])
    table = markdown(rows, EvalSettings())
    assert "| EM gain kept |" in table and "| q | quantized |" in table and "| 95% |" in table
    untuned = [row("base", "model", 10.0, 30.0), row("q", "quantized", 9.0, 29.0)]
    add_gain_kept(untuned)  # nothing was tuned: no gain to keep
    assert all("gain_kept_exact_match" not in r for r in untuned)
