"""The model repository: versions, atomic activation, rollback, names checked; and the tokenizer
without transformers matches transformers' chat template."""

from __future__ import annotations

import json

import pytest

from enclave.errors import EnclaveError
from enclave.repository import Repository
from serve.tokenizer import ServeTokenizer


def test_versions_activation_and_rollback(serve_repo, tmp_path):
    repo = Repository(tmp_path / "r")
    art = serve_repo / "models" / "tiny" / "1"
    repo.add(art, "m", "1")
    repo.add(art, "m", "2")  # active by default
    repo.add(art, "m", "3", activate=False)
    assert repo.active("m").version == "2"
    pinned = [{"version": "1", "digest": repo.active("m").manifest.digest}]  # the manifest digest of what was activated
    assert json.loads((repo.models_dir / "m" / "active.json").read_text()) == {
        "active": "2",
        "digest": pinned[0]["digest"],
        "previous": pinned,
    }
    repo.activate("m", "3")
    assert repo.rollback("m") == "2" and repo.rollback("m") == "1"
    with pytest.raises(EnclaveError, match="no earlier active version"):
        repo.rollback("m")
    with pytest.raises(EnclaveError, match="unknown model 'x'.*has: m"):
        repo.active("x")
    with pytest.raises(EnclaveError):
        repo.add(art, "../evil", "1")
    with pytest.raises(EnclaveError, match="no adapter 'nope'"):
        repo.adapter("nope")
    assert not list((repo.models_dir / "m").glob(".*tmp*"))  # nothing half-written left


def test_chat_template_without_transformers_matches(serve_repo):
    from transformers import AutoTokenizer

    root = serve_repo / "models" / "tiny" / "1"
    ours, theirs = ServeTokenizer(root), AutoTokenizer.from_pretrained(root)
    messages = [
        {"role": "user", "content": "What does 'stat' mean?"},
        {"role": "assistant", "content": "Immediately."},
        {"role": "user", "content": "And 'prn'?"},
    ]
    expected = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    assert ours.apply_chat(messages) == list(expected)
    assert ours.encode("Habeas corpus") == theirs("Habeas corpus")["input_ids"]
    assert ours.eos_ids == {theirs.eos_token_id}


def test_shipped_serve_configs_validate(tmp_path):
    from pathlib import Path

    from enclave.config import load_config
    from serve.auth import Tokens
    from serve.config import ServeConfig

    root = Path(__file__).resolve().parents[2] / "serve" / "configs"
    cfg = load_config(ServeConfig, root / "production.yaml")
    assert cfg.tls.client_ca and cfg.auth.tokens_file and cfg.adapters == {"smollm2": ["clinical-legal"]}
    # The example's hashes are placeholders: the format is valid, and a server given it refuses to start.
    example = (root / "tokens.example.yaml").read_text().replace("0" * 64, "ab" * 32)
    (tmp_path / "tokens.yaml").write_text(example)
    assert [(c.name, c.role) for _, c in Tokens(tmp_path / "tokens.yaml").entries] == [
        ("ehr-gateway", "reader"),
        ("ops", "admin"),
    ]
