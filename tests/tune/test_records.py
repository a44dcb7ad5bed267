import pytest

from enclave.errors import EnclaveError
from tests.conftest import write_jsonl
from tune.data.records import DataError, load_records


def test_instruction_chat_and_csv_forms(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Expand", "input": "bid", "output": "twice a day", "group": "clinical"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "tort?"},
                      {"role": "assistant", "content": "a civil wrong"}], "split": "test"},
    ])  # fmt: skip
    (tmp_path / "b.csv").write_text("question,answer,team\nWhat is bail?,money for release,legal\n", encoding="utf-8")
    records = load_records(str(tmp_path), {"instruction": "question", "output": "answer", "group": "team"})
    assert [r.messages for r in records] == [
        [{"role": "user", "content": "Expand\n\nbid"}, {"role": "assistant", "content": "twice a day"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "tort?"}, {"role": "assistant", "content": "a civil wrong"}],
        [{"role": "user", "content": "What is bail?"}, {"role": "assistant", "content": "money for release"}],
    ]
    assert [(r.group, r.split, r.source) for r in records] == [("clinical", None, "a.jsonl:1"), (None, "test", "a.jsonl:2"), ("legal", None, "b.csv:2")]


def test_every_bad_record_is_reported(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"instruction": "ok", "output": "fine"}\n'
        b'{"instruction": "no output"}\n'
        b'{"instruction": 3, "output": "x"}\n'
        b'not json\n'
        b'{"instruction": "caf\xe9", "output": "x"}\n'
        b'{"messages": [{"role": "user", "content": "hi"}]}\n'
        b'{"prompt": "x", "completion": "y"}\n'
        b'{"instruction": "a", "output": "b", "split": "dev"}\n'
        b'[1, 2]\n'
    )
    with pytest.raises(DataError) as info:
        load_records(str(path))
    assert info.value.problems == [
        "bad.jsonl:2: output: missing",
        "bad.jsonl:3: instruction: expected a string, got int",
        "bad.jsonl:4: not valid JSON (Expecting value at column 1)",
        "bad.jsonl:5: not valid UTF-8 (byte 20); re-save the file as UTF-8",
        "bad.jsonl:6: messages: the last message must be the assistant's answer",
        "bad.jsonl:7: needs instruction and output, or messages (found keys: completion, prompt)",
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
    assert {r.group for r in records} == {"clinical", "legal"} and {r.split for r in records} == {"train", "validation", "test"}
    with pytest.raises(EnclaveError, match="built-in: clinical_legal"):
        load_records("builtin:nope")
