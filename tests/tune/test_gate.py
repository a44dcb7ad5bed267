"""`enclave tune gate`: a continued adapter against the one it continues, on real tiny adapters, and
the checks themselves on set scores."""

from __future__ import annotations

import subprocess
import sys

from enclave.evaluation.task import EvalResult
from enclave.manifest import read_manifest, verify
from tests.conftest import write_jsonl
from tests.tune.test_continual import _config
from tune.gate import _judge
from tune.run import run


def _result(label, em, groups):
    per_group = {g: {"exact_match": v} for g, v in groups.items()}
    lo, hi = min(groups, key=groups.get), max(groups, key=groups.get)
    gaps = {"exact_match": {"gap": groups[hi] - groups[lo], "highest": hi, "lowest": lo}}
    return EvalResult(label, {"exact_match": em}, per_group, gaps)


def test_the_checks_drop_and_gap():
    active = _result("active", 60.0, {"clinical": 70.0, "legal": 50.0})

    def judge(em, groups):
        return _judge("s", 10, 0, {"active": active, "candidate": _result("c", em, groups)}, 2, 5)

    assert judge(58.5, {"clinical": 69.0, "legal": 48.0}).passed
    dropped = judge(57.0, {"clinical": 64.0, "legal": 50.0})
    assert [c for c, passed, _ in dropped.checks if not passed] == ["exact match"]
    widened = judge(61.0, {"clinical": 80.0, "legal": 42.0})
    assert [c for c, passed, _ in widened.checks if not passed] == ["gap between groups"]


def test_gate_passes_a_continued_adapter_and_records_the_verdict(enclave_home, tiny_checkpoint, facts_file, tmp_path):
    run(_config(tiny_checkpoint, facts_file, name="active"))
    corrections = write_jsonl(
        tmp_path / "corrections.jsonl",
        [
            {"instruction": "What is a tort?", "output": "A civil wrong.", "split": "train"},
            {"instruction": "What does NPO mean?", "output": "Nothing by mouth.", "split": "train"},
            {"instruction": "What does PRN mean?", "output": "As needed.", "split": "test"},
        ],
    )
    overrides = {"rehearsal.share": 0.5, "train.max_steps": 1, "train.lr": 1e-12, "train.batch_size": 4}
    candidate = run(_config(tiny_checkpoint, corrections, name="candidate", init_adapter="active", **overrides))
    cmd = [sys.executable, "-m", "enclave", "tune", "gate", "candidate", "--against", "active"]
    done = subprocess.run(cmd + ["--data", str(corrections)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "verdict: PASS" in " ".join(done.stdout.split())
    gate = read_manifest(candidate).metrics["gate"]
    assert gate["verdict"] == "pass" and gate["against"]["name"] == "active"
    names = [s["name"] for s in gate["sets"]]
    assert names == ["active test split", "candidate test split", str(corrections)]
    assert verify(candidate)[1] == []  # the verdict is in the manifest; the files still verify


def test_a_candidate_trained_on_all_its_data_is_gated_without_a_warning(
    enclave_home, tiny_checkpoint, facts_file, tmp_path, caplog
):
    """The loop's candidate trains on every correction (split_ratios [1, 0, 0]): its empty test split
    is by design, not "no records left to score"; the --data set still scores them."""
    run(_config(tiny_checkpoint, facts_file, name="active"))
    corrections = write_jsonl(
        tmp_path / "corrections.jsonl",
        [
            {"instruction": "What is a tort?", "output": "A civil wrong."},
            {"instruction": "What does NPO mean?", "output": "Nothing by mouth."},
        ],
    )
    overrides = {"data.split_ratios": [1.0, 0.0, 0.0], "train.max_steps": 1, "train.lr": 1e-12, "train.batch_size": 2}
    caplog.clear()
    run(_config(tiny_checkpoint, corrections, name="candidate", init_adapter="active", **overrides))
    assert not [r.message for r in caplog.records if r.levelname == "WARNING" and "test split" in r.message]
    cmd = [sys.executable, "-m", "enclave", "tune", "gate", "candidate", "--against", "active"]
    done = subprocess.run(cmd + ["--data", str(corrections)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "left to score" not in done.stderr and "candidate test split is empty" in done.stderr
    names = [s["name"] for s in read_manifest(enclave_home / "adapters" / "candidate").metrics["gate"]["sets"]]
    assert names == ["active test split", str(corrections)]
