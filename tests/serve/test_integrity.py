"""Integrity holes from the security review: a manifest name used as a path, versions and adapters
rewritten consistently (files and hashes) after the operator activated or added them, and the caller's
request id reused as vLLM's."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import types
from pathlib import Path

import grpc
import pytest

from enclave.errors import EnclaveError, IntegrityError
from enclave.manifest import MANIFEST, FileEntry, content_digest, create_artifact, read_manifest, require_valid
from enclave.repository import PinMismatch, Repository
from tests.serve.conftest import admin_tokens, running, serve_config
from tests.serve.test_lifecycle import _wait


def rewrite(artifact: Path, rel: str, data: bytes) -> str:
    """Change a file and rewrite the manifest to match it: hash, size and digest (verification passes).

    Returns:
        The manifest's new digest.
    """
    (artifact / rel).write_bytes(data)
    doc = json.loads((artifact / MANIFEST).read_text())
    entry = next(f for f in doc["files"] if f["path"] == rel)
    entry["sha256"], entry["size"] = hashlib.sha256(data).hexdigest(), len(data)
    doc["digest"] = content_digest([FileEntry(**f) for f in doc["files"]])
    (artifact / MANIFEST).write_text(json.dumps(doc, indent=2))
    require_valid(artifact)  # the point: a consistent rewrite passes verification
    return doc["digest"]


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_an_adapter_manifest_name_is_checked_before_it_becomes_a_path(tmp_path):
    with create_artifact(tmp_path / "evil", "adapter", "../../x") as draft:
        (draft.path / "adapter_config.json").write_text("{}")
    repo = Repository(tmp_path / "deep" / "repo")
    before = _tree(tmp_path)
    with pytest.raises(EnclaveError) as e:
        repo.add_adapter(tmp_path / "evil")
    assert f"{tmp_path / 'evil' / MANIFEST}: adapter name '../../x' is not a valid model name" in str(e.value)
    assert "lower-case letters" in str(e.value)  # the fix
    assert _tree(tmp_path) == before  # nothing written, inside the repository or outside it (deep/x)


def test_a_version_rewritten_after_activation_is_refused_at_start_until_repinned(serve_repo, tmp_path):
    repo = Repository(tmp_path / "repo")
    pinned = repo.add(serve_repo / "models" / "tiny-onnx" / "1", "m", "1").manifest.digest
    version = repo.models_dir / "m" / "1"
    config = json.loads((version / "genai_config.json").read_text())
    found = rewrite(version, "genai_config.json", json.dumps({**config, "tampered": True}).encode())
    with pytest.raises(PinMismatch) as e, running(serve_config(repo.root, default_model="m")):
        pass
    message = str(e.value)
    state = repo.models_dir / "m" / "active.json"
    for part in (
        "model 'm' version '1'",
        str(version / MANIFEST),
        f"has digest {found}",
        f"pins {pinned}",
        str(state),
        "fix: check the artifact",
        "`enclave serve activate m 1`",
    ):
        assert part in message, part
    assert isinstance(e.value, IntegrityError)
    assert json.loads(state.read_text())["digest"] == pinned  # the pin is in active.json
    repo.activate("m", "1")  # the operator checked it and re-pins: the server starts on it
    assert json.loads(state.read_text())["digest"] == found
    with running(serve_config(repo.root, default_model="m")) as server:
        assert server.models.active["m"].version.version == "1"


def test_rollback_to_a_version_rewritten_while_inactive_is_refused_and_the_old_one_keeps_serving(
    serve_repo, tmp_path, caplog
):
    from enclave.grpc_client import Client

    repo = Repository(tmp_path / "repo")
    repo.add(serve_repo / "models" / "tiny-onnx" / "1", "m", "1")
    pinned = repo.add(serve_repo / "models" / "tiny-onnx" / "1", "m", "2").manifest.digest
    repo.activate("m", "1")
    with running(serve_config(repo.root, default_model="m")) as server, Client(f"127.0.0.1:{server.port}") as client:
        config = json.loads((repo.models_dir / "m" / "2" / "genai_config.json").read_text())
        found = rewrite(
            repo.models_dir / "m" / "2", "genai_config.json", json.dumps({**config, "tampered": True}).encode()
        )
        assert repo.rollback("m") == "2"  # rolls back to the digest pinned when 2 was active, not to what is there now
        assert _wait(lambda: "could not switch to version 2" in caplog.text, 10)
        assert f"pins {pinned}" in caplog.text and f"has digest {found}" in caplog.text
        assert client.generate("hi", max_tokens=2).model_version == "1"
    state = json.loads((repo.models_dir / "m" / "active.json").read_text())
    assert state == {"active": "2", "digest": pinned, "previous": [{"version": "1", "digest": pinned}]}


def test_an_adapter_rewritten_after_it_was_added_is_refused_on_load_and_on_swap(serve_repo, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    from enclave.grpc_client import Client

    repo = Repository(tmp_path / "repo")
    repo.add(serve_repo / "models" / "tiny" / "1", "m", "1")
    repo.add(serve_repo / "models" / "tiny" / "1", "m", "2", activate=False)  # the same base: the adapter fits both
    pinned = repo.add_adapter(serve_repo / "adapters" / "facts").digest
    tokens, token = admin_tokens(tmp_path)
    cfg = serve_config(repo.root, default_model="m", adapters={"m": ["facts"]}, auth__tokens_file=str(tokens))
    with running(cfg) as server, Client(f"127.0.0.1:{server.port}", timeout=60, token=token) as client:
        assert server.models.active["m"].adapters == {"facts": pinned}
        # Other weights of the same shapes, and a manifest rewritten to match them.
        adapter = repo.adapters_dir / "facts"
        weights = {k: v * 2 + 0.01 for k, v in load_file(adapter / "adapter_model.safetensors").items()}
        save_file(weights, tmp_path / "other.safetensors")
        found = rewrite(adapter, "adapter_model.safetensors", (tmp_path / "other.safetensors").read_bytes())
        repo.activate("m", "2")  # the swap reloads the adapters on version 2: this one is refused, not served
        assert _wait(lambda: client.generate("hi", max_tokens=1).model_version == "2", 30)
        assert "facts" not in server.models.active["m"].adapters  # (before pins: reloaded without a check, and served)
        assert "adapter facts not reloaded" in caplog.text and f"pins {pinned}" in caplog.text
        with pytest.raises(grpc.RpcError) as e:
            client.generate("hi", adapter="facts", max_tokens=1)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:  # and loading it by hand is refused too, naming the pin
            client.load_adapter("facts", model="m")
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (
            f"has digest {found}" in e.value.details()
            and str(repo.root / "adapter-pins" / "facts.json") in e.value.details()
        )
    assert json.loads((repo.root / "adapter-pins" / "facts.json").read_text()) == {"adapter": "facts", "digest": pinned}


def test_active_json_of_the_old_format_is_read_unpinned_and_upgraded_on_the_next_write(serve_repo, tmp_path, caplog):
    repo = Repository(tmp_path / "repo")
    art = serve_repo / "models" / "tiny-onnx" / "1"
    for v in ("1", "2", "3"):
        repo.add(art, "m", v, activate=False)
    state = repo.models_dir / "m" / "active.json"
    state.write_text(json.dumps({"active": "2", "previous": ["1"]}))  # as written before pins
    digest = read_manifest(art).digest
    with caplog.at_level(logging.WARNING, "enclave.serve"):
        assert repo.verified(repo.active("m")).digest == digest  # unpinned: verified, and a warning says how to pin
    assert "model m version 2 is not pinned" in caplog.text
    repo.activate("m", "3")
    unpinned = [{"version": "2", "digest": None}, {"version": "1", "digest": None}]
    assert json.loads(state.read_text()) == {"active": "3", "digest": digest, "previous": unpinned}
    assert repo.rollback("m") == "2"  # pinned now, to what the operator rolled back to
    assert json.loads(state.read_text()) == {
        "active": "2",
        "digest": digest,
        "previous": [{"version": "1", "digest": None}],
    }


class FakeAsyncLLM:
    """vLLM's AsyncLLM at the boundary: records the request id each generate() gets. A fake only
    because vLLM cannot be installed in the main virtualenv (it lives in .venv-vllm); the
    integration suite runs the real one (tests/integration/test_serve_smollm2.py)."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def generate(self, prompt, params, request_id, lora_request=None):
        self.ids.append(request_id)
        yield types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=[5], logprobs=None)], finished=True)


@pytest.fixture()
def vllm_types(monkeypatch):
    """vLLM's request types: the real ones when vLLM is installed, else plain stand-ins."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        top, inputs, sampling = (types.ModuleType(n) for n in ("vllm", "vllm.inputs", "vllm.sampling_params"))
        top.SamplingParams = lambda **kw: kw
        inputs.TokensPrompt = dict
        sampling.RequestOutputKind = types.SimpleNamespace(DELTA="delta")
        sampling.StructuredOutputsParams = lambda **kw: kw
        for module in (top, inputs, sampling):
            monkeypatch.setitem(sys.modules, module.__name__, module)


def test_vllm_gets_its_own_request_ids_not_the_callers(tmp_path, vllm_types):
    from serve.backends.vllm import Engine
    from serve.config import SchedulerSettings
    from serve.job import Job, Sampling
    from serve.tokenizer import ServeTokenizer
    from tests.conftest import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 64}))
    engine = Engine(tmp_path, ServeTokenizer(tmp_path), SchedulerSettings(), "m")
    engine.llm = FakeAsyncLLM()

    async def two_jobs_with_one_caller_id():
        loop = asyncio.get_running_loop()
        jobs = [Job("caller-id", [3, 4], Sampling(max_tokens=4), loop=loop, queue=asyncio.Queue()) for _ in range(2)]
        for job in jobs:
            engine.submit(job)
        return [await job.queue.get() for job in jobs]

    events = asyncio.run(two_jobs_with_one_caller_id())
    assert [e.token_ids for e in events] == [[5], [5]] and not engine.tasks
    assert len(engine.llm.ids) == 2 and len(set(engine.llm.ids)) == 2 and "caller-id" not in engine.llm.ids
