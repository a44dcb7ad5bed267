from tune.data.clean import assign_split, clean, normalize
from tune.data.records import Record


def rec(q: str, a: str = "ans", split=None, line=1) -> Record:
    return Record([{"role": "user", "content": q}, {"role": "assistant", "content": a}], f"f.jsonl:{line}", split=split)


def test_normalize():
    assert normalize("  Cafe\u0301\t\t bid\x07 \n\n\n\n next  ") == "Café bid\n\nnext"


def test_empty_exact_and_near_duplicates_and_leakage():
    records = [
        rec("What does the abbreviation bid mean in a clinical note today?", split="train", line=1),
        rec("What does the abbreviation bid mean in a clinical note today?", split="train", line=2),  # exact
        rec("What does the abbreviation bid mean in a clinical note, today?", "other", split="train", line=3),  # near
        rec("   ", split="train", line=4),  # empty
        rec("what does the abbreviation BID mean in a clinical note today", split="test", line=5),  # leakage
        rec("Explain habeas corpus in plain words for a patient.", split="test", line=6),
    ]
    splits, stats = clean(records, (0.8, 0.1, 0.1), 0.8)
    assert (stats.empty, stats.exact_duplicates, stats.near_duplicates, stats.leakage) == (1, 1, 1, 1)
    assert [r.source for r in splits["train"]] == ["f.jsonl:1"] and [r.source for r in splits["test"]] == ["f.jsonl:6"]
    assert stats.examples["leakage"] == ["f.jsonl:5"]
    assert stats.dropped_lines() == [  # every drop named by its line, and what it duplicates
        "f.jsonl line 2: exact duplicate of line 1",
        "f.jsonl line 3: near duplicate of line 1",
        "f.jsonl line 4: empty (user message)",
        "f.jsonl line 5: test record close to the training record at line 1 (leakage)",
    ]


def test_hash_split_is_deterministic_and_near_ratio():
    records = [rec(f"question number {i} about dosing", f"answer {i}") for i in range(2000)]
    first = [assign_split(r, (0.8, 0.1, 0.1)) for r in records]
    assert first == [assign_split(r, (0.8, 0.1, 0.1)) for r in records]
    share = {s: first.count(s) / len(first) for s in ("train", "validation", "test")}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["test"] - 0.1) < 0.02
    assert assign_split(rec("x", split="test"), (1.0, 0.0, 0.0)) == "test"  # named splits win
