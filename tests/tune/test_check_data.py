"""`enclave tune check-data`: every record it drops is named by its line, also when other lines
are invalid (then nothing is trained, and the error lists both)."""

from __future__ import annotations

import json
import subprocess
import sys


def _line(q: str, a: str = "Twice a day.") -> str:
    return json.dumps({"instruction": q, "output": a})


def _file(tmp_path, bad: bool):
    words = "abcdefghijklmnopqrst"
    lines = [_line(f"Question {i} about {word} dosing on the ward today?") for i, word in enumerate(words)]
    lines[2] = _line("What does the abbreviation bid mean in a clinical note today?")
    lines[8] = json.dumps({"instruction": "", "output": ""})  # line 9: all empty
    lines[13] = _line("What does the abbreviation bid mean in a clinical note, today?")  # line 14: near line 3
    lines[19] = _line("Summarise the ruling. " + "word " * 200)  # line 20: too long
    if bad:
        lines[4] = json.dumps({"instruction": "No answer here"})  # line 5: invalid
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _check(tiny_checkpoint, path):
    cmd = [sys.executable, "-m", "enclave", "tune", "check-data", str(path)]
    overrides = [f"base_model={tiny_checkpoint}", "data.max_length=64", "data.split_ratios=[1.0,0.0,0.0]"]
    return subprocess.run(cmd + overrides, capture_output=True, text=True, timeout=300)


EXPECTED = [
    "data.jsonl line 9: empty",
    "data.jsonl line 14: near duplicate of line 3",
    "data.jsonl line 20: too long: ",
]


def test_check_data_names_the_line_of_every_dropped_record(tiny_checkpoint, tmp_path):
    done = _check(tiny_checkpoint, _file(tmp_path, bad=False))
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    for expected in EXPECTED:
        assert expected in out, (expected, out)


def test_drops_are_named_when_other_lines_are_invalid(tiny_checkpoint, tmp_path):
    done = _check(tiny_checkpoint, _file(tmp_path, bad=True))
    assert done.returncode != 0
    assert "data.jsonl:5: output: missing" in done.stderr
    for expected in EXPECTED:
        assert expected in done.stderr, (expected, done.stderr)
