"""enclave.lineage: walking first parents ends, whatever the manifests say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import enclave.lineage as lineage
from enclave.errors import EnclaveError
from enclave.lineage import adapter_fits, ancestors
from enclave.manifest import create_artifact, read_manifest


def make(root: Path, name: str, parent: Path | None = None, kind: str = "quantized") -> Path:
    parents = [read_manifest(parent).as_parent("source")] if parent else []
    with create_artifact(root / name, kind, name, parents=parents) as draft:
        (draft.path / "weights").write_text(name)  # distinct bytes, distinct digests
    return root / name


def set_parent(art: Path, parent: Path) -> None:
    """Point an artifact's first parent at ``parent`` (the digest covers files only, so it still reads)."""
    raw = json.loads((art / "manifest.json").read_text())
    raw["parents"] = [read_manifest(parent).as_parent("source").model_dump()]
    (art / "manifest.json").write_text(json.dumps(raw))


@pytest.fixture(autouse=True)
def bounded_lookups(monkeypatch, enclave_home):
    """Fail (rather than hang) when a walk does not end: count the real lookups."""
    real, calls = lineage.find_by_digest, []

    def counting(digest, near=None):
        calls.append(digest)
        assert len(calls) < 100, "the lineage walk does not end"
        return real(digest, near)

    monkeypatch.setattr(lineage, "find_by_digest", counting)
    return calls


def test_a_chain_is_walked_back_to_the_base(tmp_path):
    base = make(tmp_path, "base", kind="base_model")
    mid = make(tmp_path, "mid", base)
    top = make(tmp_path, "top", mid)
    assert [m.name for m in ancestors(read_manifest(top), top)] == ["top", "mid", "base"]


def test_a_manifest_that_is_its_own_parent_is_refused(tmp_path, bounded_lookups):
    art = make(tmp_path, "loop", kind="base_model")
    set_parent(art, art)
    with pytest.raises(
        EnclaveError, match=r"lineage of .*loop: the manifest of 'loop' \(sha256:.*\) names .*\(a cycle\)"
    ):
        ancestors(read_manifest(art), art)
    assert bounded_lookups == []


def test_a_two_step_cycle_is_refused(tmp_path):
    a = make(tmp_path, "a", kind="base_model")
    b = make(tmp_path, "b", a)
    set_parent(a, b)  # a -> b -> a
    with pytest.raises(EnclaveError, match="the manifest of 'a' .* already in its own lineage"):
        ancestors(read_manifest(b), b)


def test_adapter_fits_ends_on_a_cyclic_model(tmp_path):
    """What serve runs on its event loop when an adapter is loaded onto a model."""
    model = make(tmp_path, "model", kind="base_model")
    set_parent(model, model)
    other_base = {"base_model": {"digest": "sha256:" + "0" * 64}}
    adapter = read_manifest(make(tmp_path, "lora", kind="adapter")).model_copy(update={"settings": other_base})
    with pytest.raises(EnclaveError, match="cycle"):
        adapter_fits(adapter, read_manifest(model), model)


def test_depth_is_bounded(tmp_path, monkeypatch):
    chain = [make(tmp_path, "a0", kind="base_model")]
    for i in range(1, 5):
        chain.append(make(tmp_path, f"a{i}", chain[-1]))
    assert len(ancestors(read_manifest(chain[-1]), chain[-1])) == 5
    monkeypatch.setattr(lineage, "MAX_DEPTH", 3)
    with pytest.raises(EnclaveError, match="more than 3 parents above 'a4', stopped at 'a1'"):
        ancestors(read_manifest(chain[-1]), chain[-1])
