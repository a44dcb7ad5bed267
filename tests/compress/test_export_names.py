"""Names read from manifests never become paths unchecked (vLLM export's adapters/NAME)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from compress.export.vllm_export import add_adapters
from enclave.errors import EnclaveError
from enclave.manifest import create_artifact
from enclave.store import safe_name


def adapter_named(path: Path, name: str) -> Path:
    # No base recorded: the lineage check has nothing to refuse, so only the name is on trial.
    with create_artifact(path, "adapter", name) as draft:
        (draft.path / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return path


@pytest.mark.parametrize("name", ["../../escape", "Escape", "a/b", "..", "ok\n"])
def test_vllm_export_refuses_an_adapter_whose_manifest_name_is_not_a_directory_name(tmp_path, name):
    out = tmp_path / "export" / "v"
    out.mkdir(parents=True)
    adapter = adapter_named(tmp_path / "lora", name)
    with pytest.raises(EnclaveError, match=r"adapters: the name in .*lora/manifest.json .* is not a safe name"):
        add_adapters([str(adapter)], None, tmp_path / "src", out)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if "lora" not in p.parts)
    assert written == ["export", "export/v"]


def test_a_good_name_is_copied(tmp_path):
    out = tmp_path / "v"
    out.mkdir()
    adapter = adapter_named(tmp_path / "lora", "clinical-lora")
    assert add_adapters([str(adapter)], None, tmp_path / "src", out) == ["clinical-lora"]
    assert (out / "adapters" / "clinical-lora" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("value", [None, 3, "", "a" * 101, "x..y", "-lead", "name\n"])
def test_safe_name_names_the_field_and_value(value):
    with pytest.raises(EnclaveError, match=re.escape(f"manifest.json name {value!r} is not a safe name")):
        safe_name(value, "manifest.json name")
    assert safe_name("qwen2.5-0.5b_v1", "name") == "qwen2.5-0.5b_v1"
