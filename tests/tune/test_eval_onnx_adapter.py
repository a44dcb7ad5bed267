"""`enclave eval ONNX --adapter A`: the adapter runs unmerged on the ONNX export of its base, as the
server's onnxruntime engine runs it, and scores what it scores on its torch base with PEFT; an
adapter of another base is refused."""

from __future__ import annotations

import shutil

import pytest

from enclave.errors import EnclaveError


@pytest.fixture(scope="module")
def paths(serve_repo):
    from enclave.repository import Repository

    repo = Repository(serve_repo)
    return repo.active("tiny").path, repo.active("tiny-onnx").path, repo.adapters_dir / "facts"


def score(ref, adapter, facts_file):
    from enclave.config import load_config
    from tune.config import TuneConfig
    from tune.data.prepare import prepare
    from tune.eval.artifact import load_for_eval
    from tune.eval.run import evaluate

    cfg = load_config(TuneConfig, None, [f"data.path={facts_file}", "data.max_length=64"])
    model, tokenizer, label, artifact = load_for_eval(str(ref), str(adapter))
    context = getattr(model, "context_length", None) or model.config.max_position_embeddings
    data = prepare(cfg.data, tokenizer, context)
    return evaluate(model, tokenizer, data.records["test"], data.examples["test"], label, None, 8, 4, 100.0), artifact


def test_an_adapter_on_an_onnx_export_scores_as_on_its_torch_base(paths, facts_file):
    base, onnx, adapter = paths
    on_torch, _ = score(base, adapter, facts_file)
    on_onnx, recorded = score(onnx, adapter, facts_file)
    assert on_onnx.label == "facts on chatty-onnx" and recorded is None  # the pair's scores go in no manifest
    assert on_onnx.metrics["perplexity"] == pytest.approx(on_torch.metrics["perplexity"], rel=1e-4)
    for metric in ("exact_match", "token_f1"):
        assert on_onnx.metrics[metric] == on_torch.metrics[metric], metric
    from tune.eval.artifact import load_for_eval

    without = load_for_eval(str(onnx))[0].session.logits([5, 9, 14])
    onnx_lm = load_for_eval(str(onnx), str(adapter))[0]
    assert abs(without - onnx_lm.session.logits([5, 9, 14])).max() > 1e-3  # the adapter is applied
    # greedy decoding with the KV cache gives the tokens torch + PEFT gives
    torch_lm = load_for_eval(str(base), str(adapter))[0]
    prompts = [[5, 9, 14, 7, 3], [30, 2, 17, 8, 11, 4]]
    assert onnx_lm.greedy(prompts, 12, set()) == torch_lm_greedy(torch_lm, prompts, 12)


def test_an_adapter_of_another_base_is_refused(paths, tmp_path):
    from enclave.manifest import create_artifact, read_manifest
    from tune.eval.artifact import load_for_eval

    _, onnx, adapter = paths
    manifest = read_manifest(adapter)
    settings = {**manifest.settings, "base_model": {**manifest.settings["base_model"], "digest": "sha256:" + "0" * 64}}
    with create_artifact(tmp_path / "stray", "adapter", "stray", manifest.parents, settings) as draft:
        for f in adapter.iterdir():
            if f.is_file() and f.name != "manifest.json":
                shutil.copy(f, draft.path / f.name)
    with pytest.raises(EnclaveError, match="not in the lineage of"):
        load_for_eval(str(onnx), str(tmp_path / "stray"))


def torch_lm_greedy(model, prompts, new_tokens):
    import torch

    out = []
    for p in prompts:
        with torch.no_grad():
            ids = model.generate(
                torch.tensor([p]), max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens
            )
        out.append(ids[0, len(p) :].tolist())
    return out
