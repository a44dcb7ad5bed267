"""The PHI check of check-data: recall on the labelled sample, counts and lines per type, and a
redacted copy that keeps everything but the spans."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.tune.phi_recall import measure
from tune.data.phi import find, redact, redact_file


def test_recall_on_the_labelled_sample():
    m = measure()
    recall = sum(m["found"].values()) / sum(m["total"].values())
    assert recall >= 0.95, m
    for kind in ("DATE", "MRN", "PHONE", "ADDRESS", "EMAIL", "ID"):
        assert m["found"][kind] == m["total"][kind], (kind, m)
    assert m["found"]["NAME"] >= m["total"]["NAME"] - 2, m  # lower-case names are missed (no tagger data)


def test_names_dates_and_ids_are_replaced_by_their_type():
    text = "Pt John Smith, DOB 04/12/1957, MRN 00482913; call (617) 555-0143 or jsmith@example.org."
    assert redact(text) == "Pt [NAME], DOB [DATE], MRN [ID]; call [PHONE] or [EMAIL]."
    assert find("Define the clinical abbreviation BID.") == []  # a sentence's first word is not a name


def test_check_data_reports_phi_lines_and_redacts_a_copy(tiny_checkpoint, tmp_path):
    data = tmp_path / "notes.jsonl"
    lines = [
        {"instruction": "What does BID mean?", "output": "Twice a day."},
        {"instruction": "Summarise: Margaret O'Donnell, DOB 04/12/1957, MRN 00482913.", "output": "Admitted."},
        {"messages": [{"role": "user", "content": "Call (617) 555-0143."}, {"role": "assistant", "content": "Ok."}]},
    ]
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "redacted.jsonl"
    cmd = [sys.executable, "-m", "enclave", "tune", "check-data", str(data)]
    done = subprocess.run(
        cmd
        + [f"base_model={tiny_checkpoint}", "data.max_length=64", "data.split_ratios=[1.0,0.0,0.0]"]
        + ["--redact", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    table = " ".join(done.stdout.split())  # rich wraps the title to the terminal's width
    assert "Personal data (PHI) found in 2 record(s)" in table
    assert "NAME" in table and "DATE" in table and "PHONE" in table and "notes.jsonl line 2" in table
    redacted = [json.loads(x) for x in out.read_text().splitlines()]
    assert redacted[0] == lines[0]  # nothing to redact: the same record
    assert redacted[1]["instruction"] == "Summarise: [NAME], DOB [DATE], MRN [ID]."
    assert redacted[2]["messages"][0] == {"role": "user", "content": "Call [PHONE]."}
    assert "wrote" in done.stdout and "2 record(s) redacted" in done.stdout
    assert json.loads(data.read_text().splitlines()[1]) == lines[1]  # the input is untouched
    assert redact_file(out, tmp_path / "again.jsonl") == 0  # a redacted copy has nothing left to find
