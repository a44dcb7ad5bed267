"""LoRA adapters on the onnxruntime engine: unmerged, chosen per row, several in one step.

On the fp32 export of the chatty checkpoint, base + adapter on this engine equals the torch
backend with PEFT (greedy tokens identical, logits within 1e-4); a batch mixing the base and two
adapters equals each row run alone; adapters load and unload at run time; ones this engine cannot
run exactly are refused with the reason."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from serve.backends import onnx_lora
from serve.errors import FailedPrecondition


@pytest.fixture(scope="module")
def paths(serve_repo):
    from enclave.repository import Repository

    repo = Repository(serve_repo)
    return repo.active("tiny-onnx").path, repo.active("tiny").path, repo.adapters_dir / "facts"


@pytest.fixture(scope="module")
def scaled(paths, tmp_path_factory):
    """A second adapter: the first with its B weights tripled (another adapter on the same base)."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path_factory.mktemp("lora") / "facts3"
    shutil.copytree(paths[2], out)
    tensors = load_file(str(out / "adapter_model.safetensors"))
    save_file({k: v * 3 if "lora_B" in k else v for k, v in tensors.items()}, str(out / "adapter_model.safetensors"))
    return out


def greedy(model, prompt, adapter, steps=10):
    logits, row = model.prefill(prompt, adapter)
    batch = model.new_batch()
    batch.add(row)
    out, first = [int(logits.argmax())], logits
    for _ in range(steps):
        out.append(int(batch.step([out[-1]])[0].argmax()))
    return first, out


PROMPTS = ([5, 9, 14, 7, 3], [30, 2, 17, 8], [11, 4, 21])


def test_adapter_on_onnxruntime_equals_torch_with_peft(paths):
    from serve.backends.ort import Backend as OrtBackend
    from serve.backends.torch import Backend as TorchBackend

    onnx_root, torch_root, adapter = paths
    ort_model, torch_model = OrtBackend(onnx_root, threads=1), TorchBackend(torch_root, threads=1)
    ort_model.load_adapter("facts", adapter)
    torch_model.load_adapter("facts", adapter)
    for prompt in PROMPTS:
        for name in (None, "facts"):
            want_logits, want = greedy(torch_model, prompt, name)
            got_logits, got = greedy(ort_model, prompt, name)
            assert got == want, (prompt, name)
            np.testing.assert_allclose(got_logits, np.asarray(want_logits, np.float32), rtol=1e-4, atol=1e-4)
    base, adapted = greedy(ort_model, PROMPTS[0], None)[0], greedy(ort_model, PROMPTS[0], "facts")[0]
    assert np.abs(base - adapted).max() > 1e-3  # the adapter changes the output


def test_a_mixed_batch_equals_each_row_alone(paths, scaled):
    from serve.backends.ort import Backend, CopyBatch, OrtBatch

    model = Backend(paths[0], threads=1)
    model.load_adapter("facts", paths[2])
    model.load_adapter("facts3", scaled)
    rows = [(p, a) for p in PROMPTS for a in (None, "facts", "facts3")]
    alone = [greedy(model, p, a)[1] for p, a in rows]
    for kind in (OrtBatch, CopyBatch):
        batch, seqs = kind(model), []
        for prompt, adapter in rows:
            logits, row = model.prefill(prompt, adapter)
            batch.add(row)
            seqs.append([int(logits.argmax())])
        for _ in range(10):
            for seq, logits in zip(seqs, batch.step([s[-1] for s in seqs])):
                seq.append(int(logits.argmax()))
        assert seqs == alone, kind.__name__
    assert len({tuple(s) for s in alone[:3]}) > 1  # base and adapters really differ


def test_adapters_load_and_unload_at_run_time(paths, scaled):
    from serve.backends.ort import Backend

    model = Backend(paths[0], threads=1)
    base = greedy(model, PROMPTS[1], None)[1]
    model.load_adapter("facts", paths[2])
    with_facts = greedy(model, PROMPTS[1], "facts")[1]
    model.load_adapter("facts3", scaled)
    model.unload_adapter("facts")  # facts3 keeps its slot
    assert model.lora.slot("facts3") == 2
    assert greedy(model, PROMPTS[1], None)[1] == base
    model.unload_adapter("facts3")
    assert not model.lora.active and model.lora.inputs == {}
    model.load_adapter("facts", paths[2])
    assert greedy(model, PROMPTS[1], "facts")[1] == with_facts


def test_adapters_it_cannot_run_exactly_are_refused(paths, tmp_path):
    from serve.backends.ort import Backend

    bad = tmp_path / "bad"
    shutil.copytree(paths[2], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg.update(target_modules=["q_proj", "embed_tokens"], modules_to_save=["lm_head"])
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    refused = r"modules_to_save \['lm_head'\].*target_modules \['embed_tokens'\]"
    with pytest.raises(onnx_lora.AdapterError, match=refused):
        onnx_lora.read_adapter("bad", bad)
    model = Backend(paths[0], threads=1)
    with pytest.raises(FailedPrecondition, match="serve it on the torch backend"):
        model.load_adapter("bad", bad)
    assert not model.lora.active  # nothing half-loaded; the model keeps serving
    assert greedy(model, PROMPTS[0], None)[1]


def test_the_server_runs_adapters_on_onnxruntime_mixed_in_one_step(serve_repo):
    import threading
    import urllib.request

    from enclave.grpc_client import Client
    from tests.serve.conftest import running, serve_config

    cfg = serve_config(serve_repo, adapters={"tiny-onnx": ["facts"], "tiny": ["facts"]}, threads=2)
    with running(cfg) as server:
        with Client(f"127.0.0.1:{server.port}", timeout=60) as c:
            assert [m.backend for m in c.models().models if m.name == "tiny-onnx"] == ["onnxruntime"]
            on_ort = c.generate("The patient was given", model="tiny-onnx", adapter="facts", max_tokens=12)
            on_torch = c.generate("The patient was given", model="tiny", adapter="facts", max_tokens=12)
            assert on_ort.token_ids == on_torch.token_ids and on_ort.adapter == "facts"
            base = c.generate("The patient was given", model="tiny-onnx", max_tokens=12)
            assert base.token_ids != on_ort.token_ids

            results = {}

            def ask(i: int, adapter: str) -> None:
                results[i] = c.generate("The patient was given", model="tiny-onnx", adapter=adapter, max_tokens=40)

            threads = [threading.Thread(target=ask, args=(i, ("", "facts")[i % 2])) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert all(results[i].token_ids[:12] == (base, on_ort)[i % 2].token_ids for i in range(6))  # mixed = alone
    assert 'enclave_requests_total{adapter="facts",code="OK",model="tiny-onnx"} 4.0' in text
