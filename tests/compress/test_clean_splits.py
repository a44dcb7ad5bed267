"""Clean splits: calibration and distillation never see a record the report scores, nor the held-out text.

The test split is taken from tune's own pipeline (``prepare``, what `enclave eval` and so the
report score), and the token ids are caught where they enter each algorithm: the layer-wise
pruning loop, GPTQModel, the distillation loop.
"""

import re

import pytest
from transformers import AutoTokenizer

from compress import registry
from compress.config import CompressRecipe
from compress.distil.config import DistilSettings
from compress.prune.config import PruneSettings
from compress.quantize.config import QuantizeSettings
from compress.settings import Calibration
from enclave.config import load_config
from enclave.errors import ConfigError
from enclave.manifest import read_manifest
from tests.conftest import write_jsonl
from tune.config import DataConfig
from tune.data.prepare import prepare

WORDS = ["bail", "tort", "writ", "plea", "stat", "prn", "bid", "npo", "qhs", "po"]


def code(i: int) -> str:
    return f"QK{i:03d}X"  # one per record, so a decoded batch shows which records it holds


def leaky_dataset(path):
    """Named splits, records without one (placed by hash), and a train copy of a test record after it."""
    rows = []
    for i in range(90):
        row = {
            "instruction": f"Record {i}: what is the code for {WORDS[i % 10]} number {i}?",
            "output": f"The code is {code(i)}.",
        }
        if i < 45:
            row["split"] = ("train", "test", "validation")[i % 3]
        rows.append(row)
    rows.append({**rows[1], "split": "train"})  # a copy of test record 1, labelled train
    return write_jsonl(path, rows)


@pytest.fixture()
def data(tmp_path, tiny_checkpoint):
    """The data set, its records by split as tune sees them, and how many calibration tokens it allows."""
    path = leaky_dataset(tmp_path / "leaky.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    splits = prepare(DataConfig(path=str(path), max_length=256), tokenizer).records
    held = {s: {m for r in splits[s] for m in re.findall(r"QK\d{3}X", r.answer)} for s in ("validation", "test")}
    assert code(1) in held["test"]  # the record copied into train is scored
    assert any(int(c[2:5]) >= 45 for c in held["test"])  # so is at least one record placed by hash
    train_tokens = len(tokenizer("\n".join(r.text for r in splits["train"]))["input_ids"])
    return {
        "path": str(path),
        "held": held["validation"] | held["test"],
        "test": held["test"],
        "train": splits["train"],
        "samples": train_tokens // 64 - 1,
    }


def spy(monkeypatch, module, name: str, arg: int, caught: list):
    """Wrap module.name so the token ids passed as its ``arg``-th argument are kept, then call the real one."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        ids = args[arg]
        caught.append([int(t) for row in (ids.tolist() if hasattr(ids, "tolist") else ids) for t in row])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def assert_clean(caught: list, tokenizer, data) -> None:
    assert caught, "no token ids reached the algorithm"
    seen = set(re.findall(r"QK\d{3}X", "".join(tokenizer.decode(ids) for ids in caught)))
    assert not seen & data["held"], (
        f"validation/test records reached calibration or distillation: {sorted(seen & data['held'])}"
    )
    assert len(seen) >= 0.9 * len(data["train"])  # nearly every train record did (the last partial sequence is cut)


def test_no_test_record_reaches_pruning_calibration(enclave_home, tiny_checkpoint, data, tmp_path, monkeypatch):
    import compress.prune.run as prune_run

    caught = []
    spy(monkeypatch, prune_run, "run_layerwise", 1, caught)
    cal = Calibration(source=data["path"], samples=data["samples"], seq_len=64)
    out = registry.get("prune").run(
        str(tiny_checkpoint), PruneSettings(algorithm="wanda", calibration=cal), tmp_path / "p", "p"
    )
    assert_clean(caught, AutoTokenizer.from_pretrained(tiny_checkpoint), data)
    read = read_manifest(out).settings["calibration"]["read"]
    assert read["tokens_used"] == data["samples"] * 64
    [source] = read["sources"]
    got = (source["source"], source["split"], source["records"], source["dropped_overlap"])
    assert got == (data["path"], "train", len(data["train"]), 0)
    assert source["tokens"] >= read["tokens_used"]


def test_no_test_record_reaches_gptq_calibration(enclave_home, tiny_wide_checkpoint, data, tmp_path, monkeypatch):
    pytest.importorskip("gptqmodel")
    from compress.quantize import gptq

    caught = []
    spy(monkeypatch, gptq, "quantize", 2, caught)
    cal = Calibration(source=data["path"], samples=data["samples"], seq_len=64)
    settings = QuantizeSettings(group_size=32, calibration=cal)
    out = registry.get("quantize").run(str(tiny_wide_checkpoint), settings, tmp_path / "q", "q")
    assert_clean(caught, AutoTokenizer.from_pretrained(tiny_wide_checkpoint), data)
    assert read_manifest(out).settings["calibration"]["read"]["sources"][0]["split"] == "train"


def test_no_test_record_reaches_distillation(enclave_home, tiny_checkpoint, data, tmp_path, monkeypatch):
    import compress.distil.run as distil_run

    caught = []
    spy(monkeypatch, distil_run, "_train", 2, caught)
    settings = DistilSettings(teacher=str(tiny_checkpoint), data=[data["path"]], steps=2, batch_size=2, seq_len=16)
    out = registry.get("distil").run(str(tiny_checkpoint), settings, tmp_path / "d", "d")
    assert_clean(caught, AutoTokenizer.from_pretrained(tiny_checkpoint), data)
    read = read_manifest(out).settings["read"]
    assert [(s["source"], s["split"], s["records"]) for s in read["sources"]] == [
        (data["path"], "train", len(data["train"]))
    ]


def test_the_test_split_and_the_heldout_text_cannot_be_chosen_for_training(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(
            PruneSettings,
            None,
            ["calibration.split=test", "calibration.source=[builtin:legal_texts, builtin:heldout_apache2]"],
        )
    assert "calibration.split: Value error, the test split is what `enclave compress report` scores" in str(info.value)
    assert "calibration.source: Value error, builtin:heldout_apache2 is the held-out text" in str(info.value)
    with pytest.raises(ConfigError, match="split: Value error, the test split"):
        load_config(DistilSettings, None, ["split=test"])
    mine = tmp_path / "mine.txt"
    mine.write_text("my own held-out text")
    with pytest.raises(ConfigError, match=r"steps.1.calibration.source include\(s\) eval.heldout \(.*mine.txt\)"):
        steps = f"steps=[{{step: merge, adapter: a}}, {{step: prune, calibration: {{source: {mine}}}}}]"
        load_config(CompressRecipe, None, [steps, f"eval.heldout={mine}"])
    # A data set as held-out text is its test split, which training never reads: allowed.
    load_config(CompressRecipe, None, ["steps=[{step: distil}]", "eval.heldout=builtin:clinical_legal"])


def test_training_text_shares_no_13_words_with_the_heldout_text():
    """builtin:legal_texts (MPL-2.0) repeats a few sentences of the Apache licence, the held-out text."""
    from compress.text import _grams, read_source, training_text
    from enclave.texts import HELDOUT

    heldout = _grams(read_source(HELDOUT))
    raw = _grams(read_source("builtin:legal_texts"))
    assert raw & heldout  # the overlap is real ...
    read = {}
    for source in QuantizeSettings().calibration.source + DistilSettings().data:
        text, read[source] = training_text(source, "train", "calibration.source")
        assert not _grams(text) & heldout, source  # ... and never reaches calibration or distillation
    assert read["builtin:legal_texts"].dropped_overlap > 0 and read["builtin:psf_license"].dropped_overlap == 0
    assert read["builtin:clinical_legal"].split == "train" and read["builtin:clinical_legal"].records == 340
    assert read["builtin:legal_texts"].split is None and read["builtin:legal_texts"].records is None


def test_heldout_reading_of_a_data_set_is_its_test_split(tmp_path):
    from compress.text import read_source

    path = leaky_dataset(tmp_path / "d.jsonl")
    text = read_source(str(path))
    assert code(4) in text and code(0) not in text and code(2) not in text
    assert code(1) not in text  # a test record with a copy in train is left out of either side
