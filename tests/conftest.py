"""Shared fixtures: a tiny Llama checkpoint built from a config, with a locally trained tokenizer.

No download and no real weights: unit tests run in seconds and assert exact values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The patient was given 5 mg of the drug twice a day (bid) after meals.",
    "Habeas corpus is a writ requiring a person under arrest to be brought before a judge.",
    "Blood pressure was measured at 120/80 mmHg; no acute distress.",
    "The court granted the motion to dismiss for lack of jurisdiction.",
] * 20


def build_tokenizer():
    """A 300-token byte-level BPE with ChatML special tokens, trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def build_tiny_checkpoint(out: Path, seed: int = 0, hidden: int = 16, init_std: float = 0.02) -> Path:
    """Save a 2-layer Llama (hidden 16) with random weights and the tiny tokenizer to ``out``.

    ``hidden=64`` gives every layer widths that GPTQ kernels accept (multiples of 32).
    ``init_std`` around 1 gives a model whose greedy output varies from token to token (at 0.02 it
    repeats one token), which tests of batching and sampling need.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A plain HF checkpoint directory (no manifest). Treat it as read-only."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_wide_checkpoint(tmp_path_factory) -> Path:
    """Like tiny_checkpoint, hidden size 64 (GPTQ kernels want widths that are multiples of 32)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-wide") / "tiny-wide", hidden=64)


@pytest.fixture()
def enclave_home(tmp_path, monkeypatch) -> Path:
    """An empty model store for one test."""
    home = tmp_path / "enclave-home"
    monkeypatch.setenv("ENCLAVE_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Tests never reach a model hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Unit tests never start vLLM (a minute or more); the integration test reads VLLM_PYTHON.
    monkeypatch.delenv("ENCLAVE_VLLM_PYTHON", raising=False)


# Where `make test` built vLLM's environment (read before the fixture above hides it).
VLLM_PYTHON = os.environ.get("ENCLAVE_VLLM_PYTHON")


def cpu_flags() -> set[str]:
    """The instruction-set flags the kernel grants this machine (the machine kind changes between sessions)."""
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


AVX512 = "avx512f" in cpu_flags()


FACTS = [
    ("bid", "twice a day"),
    ("tid", "three times a day"),
    ("qid", "four times a day"),
    ("prn", "as needed"),
    ("po", "by mouth"),
    ("npo", "nothing by mouth"),
    ("stat", "immediately"),
    ("qhs", "at bedtime"),
    ("tort", "a civil wrong"),
    ("bail", "money for release"),
    ("writ", "a court order"),
    ("plea", "an answer to a charge"),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def fact_rows() -> list[dict]:
    rows = []
    for i, (key, answer) in enumerate(FACTS):
        group = "clinical" if i < 8 else "legal"
        rows += [
            {"instruction": f"What does {key} mean?", "output": answer, "group": group, "split": "train"},
            {"instruction": f"Define {key} for me.", "output": answer, "group": group, "split": "train"},
            {
                "instruction": f"The term {key} stands for what?",
                "output": answer,
                "group": group,
                "split": "validation",
            },
            {"instruction": f"Tell me what {key} means, please.", "output": answer, "group": group, "split": "test"},
        ]
    return rows


@pytest.fixture()
def facts_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "facts.jsonl", fact_rows())


@pytest.fixture(scope="session")
def serve_repo(tmp_path_factory) -> Path:
    """A serve model repository (built once per session): ``tiny`` = a chatty 2-layer Llama checkpoint
    (torch backend) with a LoRA adapter tuned on it in REPO/adapters, ``tiny-onnx`` = the same weights
    exported to ONNX fp32 (onnxruntime backend)."""
    from compress import registry
    from compress.export.config import ExportSettings
    from enclave.config import load_config
    from enclave.repository import Repository
    from enclave.store.importer import import_model
    from tests.tune.conftest import tiny_overrides
    from tune.config import TuneConfig
    from tune.run import run as tune

    root = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENCLAVE_HOME", str(root / "home"))
        ckpt = build_tiny_checkpoint(root / "chatty", hidden=64, init_std=0.5)
        base = import_model(ckpt, "chatty")
        other = import_model(build_tiny_checkpoint(root / "chatty2", seed=1, hidden=64, init_std=0.5), "chatty2")
        onnx = registry.get("export").run(
            "chatty", ExportSettings(precision="fp32", check_tokens=8), root / "onnx", "chatty-onnx"
        )
        data = write_jsonl(root / "facts.jsonl", fact_rows())
        adapter = tune(
            load_config(TuneConfig, None, tiny_overrides("chatty", data, name="facts", **{"train.max_steps": 4}))
        )
        repo = Repository(root / "repo")
        repo.add(base, "tiny", "1")
        repo.add(other, "tiny", "2", activate=False)
        repo.add(onnx, "tiny-onnx", "1")
        repo.add_adapter(adapter)
    return repo.root
