"""enclave.splits: one split rule for every stage (a record's own split, else its content hash)."""

import pytest

from enclave.records import Record, load_records
from enclave.splits import DEFAULT_SPLIT_RATIOS, assign_split, load_split, normalized, select_split
from tests.conftest import write_jsonl


def rec(question: str, answer: str = "a", split: str | None = None, line: int = 1) -> Record:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Record(messages, f"d.jsonl:{line}", split=split)


def test_named_splits_win_and_file_order_is_kept():
    records = [
        rec("q1", split="test"),
        rec("q2", split="train"),
        rec("q3", split="validation"),
        rec("q4", split="train"),
    ]
    assert [r.messages[0]["content"] for r in select_split(records, "train")] == ["q2", "q4"]
    assert [r.messages[0]["content"] for r in select_split(records, "test")] == ["q1"]
    with pytest.raises(ValueError, match="'dev' is not one of train, validation, test"):
        select_split(records, "dev")


def test_unsplit_records_are_placed_by_their_normalized_content():
    records = [rec(f"What is item number {i}?", f"answer {i}") for i in range(2000)]
    splits = {s: select_split(records, s) for s in ("train", "validation", "test")}
    assert sum(len(v) for v in splits.values()) == 2000
    shares = [len(splits[s]) / 2000 for s in ("train", "validation", "test")]
    assert shares == pytest.approx(DEFAULT_SPLIT_RATIOS, abs=0.03)
    # Stray spaces and a non-NFC accent do not move a record to another split.
    messy = [rec(f"What  is item   number {i}? ", f" answer {i}") for i in range(2000)]
    assert [assign_split(normalized(m)) for m in messy] == [assign_split(normalized(r)) for r in records]
    assert assign_split(normalized(rec("caf\u0065\u0301"))) == assign_split(normalized(rec("caf\u00e9")))


def test_a_copy_of_a_record_in_another_split_is_left_out_whatever_the_order():
    leaked = "Which court hears appeals from the district court?"
    records = [
        rec(leaked, "the court of appeals", "test", 1),
        rec("Define tort.", "a civil wrong", "train", 2),
        rec(leaked + "  ", "the court of appeals", "train", 3),
    ]
    assert [r.source for r in select_split(records, "train")] == ["d.jsonl:2"]
    assert [r.source for r in select_split(list(reversed(records)), "train")] == ["d.jsonl:2"]


def test_load_split_names_the_setting_in_errors(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "q", "output": "a", "split": "train"}])
    assert [r.answer for r in load_split(str(path), "train")] == ["a"]
    assert load_split(str(path), "test") == []
    with pytest.raises(Exception, match=r"calibration.source '/nope.jsonl' does not exist"):
        load_split("/nope.jsonl", "train", setting="calibration.source")
    with pytest.raises(Exception, match=r"calibration.source: no built-in data set 'nope'"):
        load_records("builtin:nope", setting="calibration.source")
