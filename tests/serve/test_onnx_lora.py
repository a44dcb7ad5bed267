"""LoRA adapters on the onnxruntime engine: unmerged, chosen per row, several in one step.

On the fp32 export of the chatty checkpoint, base + adapter on this engine equals the torch
backend with PEFT (greedy tokens identical, logits within 1e-4); a batch mixing the base and two
adapters equals each row run alone; adapters load and unload at run time; ones this engine cannot
run exactly are refused with the reason."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from enclave import onnx_lora
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


def test_a_run_reads_only_the_adapters_its_rows_use(paths, scaled):
    """Base rows read no adapter weights; one adapter's rows read its slot alone (a view of the
    stack, no copy); rows of non-adjacent slots read a gathered copy of just those slots."""
    from serve.backends.ort import Backend

    model = Backend(paths[0], threads=1)
    for name, path in (("facts", paths[2]), ("facts3", scaled), ("facts-again", paths[2])):
        model.load_adapter(name, path)
    (layer, proj), (a, b) = next(iter(model.lora.stacked.items()))
    rank, a_in = model.lora.ranks[(layer, proj)], onnx_lora.input_name(layer, proj, "A")
    mask = onnx_lora.MASK.format(rank)

    base = model.lora.feed(np.array([0, 0]))
    assert base[a_in].shape == (0, a.shape[1]) and base[mask].shape == (2, 1, 0)
    one = model.lora.feed(np.array([2, 0, 2]))
    assert one[a_in].shape == (rank, a.shape[1]) and np.shares_memory(one[a_in], a)
    np.testing.assert_array_equal(one[a_in], a[rank : 2 * rank])
    np.testing.assert_array_equal(one[mask][:, 0, 0], [1, 0, 1])
    apart = model.lora.feed(np.array([3, 1]))  # slots 1 and 3: a copy of those two only
    assert apart[a_in].shape == (2 * rank, a.shape[1]) and not np.shares_memory(apart[a_in], a)
    np.testing.assert_array_equal(apart[a_in], np.concatenate([a[:rank], a[2 * rank :]]))
    np.testing.assert_array_equal(apart[mask][:, 0, ::rank], [[0, 1], [1, 0]])
    # a batch of slots 1 and 3 (a gathered copy) answers as each row alone (a view)
    alone = [greedy(model, PROMPTS[0], n)[1] for n in ("facts", "facts-again")]
    batch, seqs = model.new_batch(), []
    for name in ("facts", "facts-again"):
        logits, row = model.prefill(PROMPTS[0], name)
        batch.add(row)
        seqs.append([int(logits.argmax())])
    for _ in range(10):
        for seq, logits in zip(seqs, batch.step([s[-1] for s in seqs])):
            seq.append(int(logits.argmax()))
    assert seqs == alone and alone[0] == alone[1]


def test_loaded_adapters_cost_about_their_own_size(paths, scaled):
    """The stack is the only copy of the adapters' weights (numpy memory, traced): loading four
    more adapters holds a stack of five slots and nothing else. (A slot is the adapter's
    size where it adapts all of q, k and v, larger where it adapts some: q_proj's and v_proj's B
    go into column blocks of the fused qkv projection's B.)"""
    import tracemalloc

    from serve.backends.ort import Backend

    model = Backend(paths[0], threads=1)
    model.load_adapter("first", paths[2])  # the graph gains its LoRA branches (a new session) here
    tracemalloc.start()  # counts what is allocated from here on: the whole new stack of 5 slots
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(4):
            model.load_adapter(f"a{i}", paths[2] if i % 2 else scaled)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    per_slot = sum(a.nbytes + b.nbytes for a, b in model.lora.stacked.values()) / len(model.lora.adapters)
    assert held <= 1.2 * 5 * per_slot, f"{held / per_slot:.2f} slots' worth of memory for 5 adapters"


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
    assert not model.lora.active and model.lora.stacked == {}
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
    finished = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('enclave_requests_total{adapter="facts",api="grpc",code="OK",finished_reason="')
        and 'model="tiny-onnx"' in line
    ]
    assert sum(finished) == 4.0
    # the metrics show the mixed batch: steps that held the base and the adapter together
    steps = {
        le: float(n)
        for le, n in re.findall(r'enclave_batch_adapters_bucket\{le="([^"]+)",model="tiny-onnx"\} (\S+)', text)
    }
    assert steps["+Inf"] > steps["1.0"] > 0
