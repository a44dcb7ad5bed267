import pytest

from enclave.errors import EnclaveError
from tests.conftest import write_jsonl
from tune.data.records import DataError, load_records


def test_instruction_chat_and_csv_forms(tmp_path):
    write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"instruction": "Expand", "input": "bid", "output": "twice a day", "group": "clinical"},
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "tort?"},
                    {"role": "assistant", "content": "a civil wrong"},
                ],
                "split": "test",
            },
        ],
    )
    (tmp_path / "b.csv").write_text("question,answer,team\nWhat is bail?,money for release,legal\n", encoding="utf-8")
    records = load_records(str(tmp_path), {"instruction": "question", "output": "answer", "group": "team"})
    assert [r.messages for r in records] == [
        [{"role": "user", "content": "Expand\n\nbid"}, {"role": "assistant", "content": "twice a day"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "tort?"},
            {"role": "assistant", "content": "a civil wrong"},
        ],
        [{"role": "user", "content": "What is bail?"}, {"role": "assistant", "content": "money for release"}],
    ]
    assert [(r.group, r.split, r.source) for r in records] == [
        ("clinical", None, "a.jsonl:1"),
        (None, "test", "a.jsonl:2"),
        ("legal", None, "b.csv:2"),
    ]


def test_every_bad_record_is_reported(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"instruction": "ok", "output": "fine"}\n'
        b'{"instruction": "no output"}\n'
        b'{"instruction": 3, "output": "x"}\n'
        b"not json\n"
        b'{"instruction": "caf\xe9", "output": "x"}\n'
        b'{"messages": [{"role": "user", "content": "hi"}]}\n'
        b'{"prompt": "x", "completion": "y"}\n'
        b'{"instruction": "a", "output": "b", "split": "dev"}\n'
        b"[1, 2]\n"
    )
    with pytest.raises(DataError) as info:
        load_records(str(path))
    assert info.value.problems == [
        "bad.jsonl:2: output: missing",
        "bad.jsonl:3: instruction: expected a string, got int",
        "bad.jsonl:4: not valid JSON (Expecting value at column 1)",
        "bad.jsonl:5: not valid UTF-8 (byte 20); re-save the file as UTF-8",
        "bad.jsonl:6: messages: the last message must be the assistant's answer",
        "bad.jsonl:7: needs instruction and output, messages, or prompt, chosen and rejected "
        "(found keys: completion, prompt)",
        "bad.jsonl:8: split: 'dev' is not one of train, validation, test",
        "bad.jsonl:9: expected a JSON object, got list",
    ]
    assert "nothing was trained" in str(info.value)


def test_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(EnclaveError, match="holds no records"):
        load_records(str(tmp_path / "e.jsonl"))


def test_csv_missing_column_lists_header(tmp_path):
    (tmp_path / "b.csv").write_text("q,a\nx,y\n")
    with pytest.raises(DataError, match="data.columns.instruction -> 'instruction'.*the header has: q, a"):
        load_records(str(tmp_path / "b.csv"))


def test_builtin_demo_set_is_valid():
    records = load_records("builtin:clinical_legal")
    assert len(records) == 680
    assert {r.group for r in records} == {"clinical", "legal"} and {r.split for r in records} == {
        "train",
        "validation",
        "test",
    }
    with pytest.raises(EnclaveError, match="built-in: clinical_legal"):
        load_records("builtin:nope")


def test_tune_splits_as_the_shared_layer_does(tmp_path):
    """compress reads the train split through enclave.splits; tune (and `enclave eval`) through its cleaning.
    They must agree on every record, named split or not, or a test record could reach calibration."""
    from enclave import records as shared
    from enclave.splits import DEFAULT_SPLIT_RATIOS, select_split
    from tune.config import DataConfig
    from tune.data.clean import clean

    assert load_records is shared.load_records and DataError is shared.DataError
    assert DataConfig().split_ratios == DEFAULT_SPLIT_RATIOS
    words = ["bail", "tort", "writ"] * 60
    rows = [{"instruction": f"Question {i} about {w}?", "output": f"Answer {i}."} for i, w in enumerate(words)]
    rows += [
        {"instruction": f"Named {i}: what is {w}?", "output": "x", "split": s}
        for i, (w, s) in enumerate([("stat", "test"), ("prn", "train"), ("qhs", "validation")] * 5)
    ]
    write_jsonl(tmp_path / "d.jsonl", rows)
    splits, stats = clean(load_records(str(tmp_path / "d.jsonl")), DEFAULT_SPLIT_RATIOS, 0.8)
    assert stats.near_duplicates == stats.leakage == 0  # else tune drops records the shared layer keeps
    for split in ("train", "validation", "test"):
        shared_split = select_split(load_records(str(tmp_path / "d.jsonl")), split)
        assert [r.source for r in splits[split]] == [r.source for r in shared_split]
    assert min(len(v) for v in splits.values()) >= 5
