"""Tampering: a flipped byte in a weight file, an edited manifest, an adapter's weights swapped
for another adapter's. Each is refused, naming the file, and nothing tampered is ever served."""

from __future__ import annotations

import hashlib
import json
import shutil

import grpc
import pytest

from enclave.errors import IntegrityError
from tests.serve.conftest import admin_tokens, running, serve_config

pytestmark = pytest.mark.reliability


def test_flipped_byte_edited_manifest_and_swapped_adapter_are_refused_by_name(serve_repo, tmp_path, record):
    from safetensors.torch import load_file, save_file

    from enclave.grpc_client import Client

    refused = {}
    # A flipped byte in the ONNX model's weights: the server will not start on it.
    repo = tmp_path / "flipped"
    shutil.copytree(serve_repo, repo)
    weights = max(
        (p for p in (repo / "models" / "tiny-onnx" / "1").iterdir() if p.name.startswith("model.onnx")),
        key=lambda p: p.stat().st_size,
    )
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as e, running(serve_config(repo)):
        pass
    refused["flipped byte"] = str(e.value)
    assert weights.name in str(e.value)
    # A changed file with the manifest edited to match it (its hash and size rewritten): the
    # manifest's digest no longer matches its file list, so it is refused, naming manifest.json.
    repo = tmp_path / "edited"
    shutil.copytree(serve_repo, repo)
    version = repo / "models" / "tiny" / "1"
    config = version / "config.json"
    config.write_text(config.read_text().replace("{", '{"tampered": true, ', 1))
    manifest = version / "manifest.json"
    doc = json.loads(manifest.read_text())
    entry = next(f for f in doc["files"] if f["path"] == "config.json")
    entry["sha256"], entry["size"] = hashlib.sha256(config.read_bytes()).hexdigest(), config.stat().st_size
    manifest.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError) as e, running(serve_config(repo, default_model="tiny")):
        pass
    refused["edited manifest"] = str(e.value)
    assert "manifest" in str(e.value)
    # An adapter whose weights were replaced by another adapter's (same shapes, other values).
    repo = tmp_path / "swapped"
    shutil.copytree(serve_repo, repo)
    target = repo / "adapters" / "facts" / "adapter_model.safetensors"
    other = {k: v * 2 + 0.01 for k, v in load_file(target).items()}
    save_file(other, target)
    tokens, admin = admin_tokens(tmp_path)
    with (
        running(serve_config(repo, default_model="tiny", auth__tokens_file=str(tokens))) as server,
        Client(f"127.0.0.1:{server.port}", timeout=60, token=admin) as c,
    ):
        with pytest.raises(grpc.RpcError) as e:
            c.load_adapter("facts", model="tiny")
        refused["swapped adapter"] = e.value.details()
        assert (
            e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "adapter_model.safetensors" in e.value.details()
        )
        assert all(
            "facts" not in [a.name for a in m.adapters] for m in c.models().models
        )  # nothing tampered was loaded
        assert len(c.generate("hi", model="tiny", max_tokens=2).token_ids) >= 1  # the base keeps serving
    record({"refused": {k: v[:300] for k, v in refused.items()}})
