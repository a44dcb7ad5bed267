"""The training loop on the tiny model: real losses, real checkpoints, exact comparisons."""

import json

import pytest
import torch
from safetensors.torch import load_file

from enclave.config import load_config
from enclave.errors import ConfigError, EnclaveError
from enclave.manifest import read_manifest, verify
from tests.conftest import write_jsonl
from tests.tune.conftest import tiny_overrides
from tune.config import TuneConfig, UnfreezeStage
from tune.run import run
from tune.train.model import stage_at, stage_layers
from tune.train.optim import lr_factor


def recipe(tiny_checkpoint, facts_file, **extra) -> TuneConfig:
    return load_config(TuneConfig, None, tiny_overrides(tiny_checkpoint, facts_file, **extra))


def adapter_weights(path):
    return load_file(path / "adapter_model.safetensors")


def test_run_writes_a_verified_adapter_that_peft_loads(enclave_home, tiny_checkpoint, facts_file):
    out = run(recipe(tiny_checkpoint, facts_file, **{"eval.compare_base": "true"}))
    assert out == enclave_home / "adapters" / "tiny"
    manifest, problems = verify(out)
    assert problems == [] and manifest.kind == "adapter"
    names = {f.path for f in manifest.files}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "loss_curve.png",
        "eval_report.md",
        "training_log.jsonl",
        "data_report.json",
    } <= names
    assert manifest.settings["data_digest"].startswith("sha256:") and manifest.settings["config"]["lora"]["r"] == 4
    m = manifest.metrics
    assert (
        m["steps"] == 6
        and m["final_train_loss"] < json.loads((out / "training_log.jsonl").read_text().splitlines()[0])["loss"]
    )
    assert set(m["eval_adapter"]["metrics"]) >= {"perplexity", "exact_match", "token_f1", "bleu", "rouge_l"}
    assert set(m["eval_adapter"]["per_group"]) == {"clinical", "legal"} and "eval_base" in m
    # PEFT loads the directory unchanged.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_checkpoint), out)
    trained = adapter_weights(out)
    live = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(trained) == len(live) == 8  # q_proj and v_proj, A and B, 2 layers


def _perplexity_of(model, tokenizer_dir, text: str) -> float:
    from transformers import AutoTokenizer

    from enclave.evaluation.lm import TorchLM
    from enclave.evaluation.perplexity import text_perplexity

    ids = AutoTokenizer.from_pretrained(tokenizer_dir)(text, add_special_tokens=False)["input_ids"]
    return text_perplexity(TorchLM(model.eval()), ids, max_tokens=2048)


def test_forgetting_is_measured_on_general_text_and_warned_about(
    enclave_home, tiny_checkpoint, facts_file, tmp_path, caplog
):
    """A base that knows some "general" text (fully tuned on it first) is tuned on the facts with a
    high learning rate: its perplexity on that text, measured before and after as compress measures
    it, goes up past the threshold, and the report and the manifest say so."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    line = "0817 QZXJ 5293 KVWY 6640"
    general = tmp_path / "general.txt"
    general.write_text(" ".join([line] * 40))
    rows = [
        {"instruction": f"Recite {i}.", "output": line, "split": split}
        for i in range(12)
        for split in ("train", "validation", "test")
    ]
    knows = run(
        recipe(
            tiny_checkpoint,
            write_jsonl(tmp_path / "general.jsonl", rows),
            name="general",
            **{"lora.method": "full", "train.lr": 0.01, "train.max_steps": 20, "eval.general_text": "null"},
        )
    )
    assert "forgetting" not in read_manifest(knows).metrics  # eval.general_text: null skips the check

    out = run(
        recipe(knows, facts_file, **{"eval.compare_base": "true", "train.lr": 0.05, "eval.general_text": str(general)})
    )
    m = read_manifest(out).metrics
    forgetting = m["forgetting"]
    assert forgetting["text"] == str(general) and forgetting["threshold"] == 1.25
    text = general.read_text()
    assert forgetting["before"] == pytest.approx(
        _perplexity_of(AutoModelForCausalLM.from_pretrained(knows), knows, text), rel=1e-5
    )
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(knows), out)
    assert forgetting["after"] == pytest.approx(_perplexity_of(tuned, knows, text), rel=1e-4)
    assert forgetting["ratio"] > 3  # measured: 31.5 -> 282
    assert m["eval_base"]["metrics"]["general_perplexity"] == forgetting["before"]
    assert m["eval_adapter"]["metrics"]["general_perplexity"] == forgetting["after"]
    assert any(f"general-text perplexity ({general}) went from" in w for w in m["eval_adapter"]["warnings"])
    assert "general-text perplexity" in caplog.text and "| general_perplexity |" in (out / "eval_report.md").read_text()
    with pytest.raises(
        ConfigError,
        match=r"eval.general_text: .*'builtin:nope' is not a text file or a shipped text "
        r"\(builtin: heldout_apache2, legal_texts, psf_license\)",
    ):
        recipe(tiny_checkpoint, facts_file, **{"eval.general_text": "builtin:nope"})


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "rmsprop"])
def test_every_optimizer_lowers_the_loss(enclave_home, tiny_checkpoint, facts_file, optimizer):
    lr = {"adamw": 0.01, "sgd": 0.5, "rmsprop": 0.002}[optimizer]
    out = run(
        recipe(tiny_checkpoint, facts_file, **{"train.optimizer": optimizer, "train.lr": lr, "train.max_steps": 8})
    )
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert sum(r["loss"] for r in log[-3:]) < sum(r["loss"] for r in log[:3])


def test_grad_accumulation_gives_the_same_update(enclave_home, tiny_checkpoint, facts_file):
    a = adapter_weights(run(recipe(tiny_checkpoint, facts_file, name="one", **{"lora.dropout": 0.0})))
    b = adapter_weights(
        run(recipe(tiny_checkpoint, facts_file, name="two", **{"lora.dropout": 0.0, "train.grad_accum": 4}))
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_early_stopping_keeps_the_best_adapter(enclave_home, tiny_checkpoint, facts_file):
    # A huge learning rate makes validation loss worse after the first evaluation.
    cfg = recipe(
        tiny_checkpoint,
        facts_file,
        **{
            "train.lr": 3.0,
            "train.max_steps": 40,
            "train.eval_every": 1,
            "train.patience": 2,
            "train.max_grad_norm": "null",
        },
    )
    m = read_manifest(run(cfg)).metrics
    assert m["stopped_early"] and m["steps"] < 40
    assert m["steps"] == m["best_step"] + 2


def test_progressive_unfreezing_trains_top_layers_first(enclave_home, tiny_checkpoint, facts_file):
    stages = '[{layers: "top:1", steps: 4}, {layers: all}]'
    cfg = recipe(tiny_checkpoint, facts_file, **{"train.unfreeze": stages, "train.max_steps": 4, "lora.dropout": 0.0})
    w = adapter_weights(run(cfg))
    # LoRA B starts at zero: only layer 1 (the top of 2) moved during the first stage.
    assert all(w[k].abs().sum() == 0 for k in w if ".layers.0." in k and "lora_B" in k)
    assert all(w[k].abs().sum() > 0 for k in w if ".layers.1." in k and "lora_B" in k)


def test_stage_and_schedule_helpers():
    stages = [UnfreezeStage(layers="top:2", steps=3), UnfreezeStage(layers="0-1", steps=2), UnfreezeStage()]
    assert [stage_at(stages, s).layers for s in (0, 2, 3, 4, 5, 99)] == ["top:2", "top:2", "0-1", "0-1", "all", "all"]
    assert stage_layers(stages[0], 30) == {28, 29} and stage_layers(stages[1], 30) == {0, 1}
    with pytest.raises(EnclaveError, match="top:N or a-b"):
        stage_layers(UnfreezeStage(layers="bottom"), 30)
    assert lr_factor(0, 4, 20, "cosine") == pytest.approx(0.2) and lr_factor(4, 4, 20, "cosine") == 1.0
    assert lr_factor(12, 4, 20, "linear") == pytest.approx(0.5) and lr_factor(12, 4, 20, "cosine") == pytest.approx(0.5)
    assert lr_factor(20, 4, 20, "cosine") == pytest.approx(0.0, abs=1e-12)


def test_bad_settings_are_refused_before_training(enclave_home, tiny_checkpoint, facts_file):
    with pytest.raises(ConfigError) as info:
        recipe(tiny_checkpoint, facts_file, **{"train.lr": 0, "lora.r": 0, "bogus": 1})
    assert info.value.problems == [
        "lora.r: Input should be greater than or equal to 1 (got 0)",
        "train.lr: Input should be greater than 0 (got 0)",
        "bogus: unknown key (check the spelling; `--help` lists the keys)",
    ]
    with pytest.raises(ConfigError, match="batch_size 6 must be a multiple of grad_accum 4"):
        recipe(tiny_checkpoint, facts_file, **{"train.batch_size": 6, "train.grad_accum": 4})
    with pytest.raises(
        EnclaveError,
        match=r"lora.target_modules: qkv not found.*(?s:.*)"
        r"down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj",
    ):
        run(recipe(tiny_checkpoint, facts_file, **{"lora.target_modules": "[q_proj, qkv]"}))
    with pytest.raises(EnclaveError, match="data.max_length 4096 is beyond the model's context length 128"):
        run(recipe(tiny_checkpoint, facts_file, **{"data.max_length": 4096}))
    with pytest.raises(EnclaveError, match="fewer than one batch"):
        run(recipe(tiny_checkpoint, facts_file, **{"train.batch_size": 64}))
    assert not (enclave_home / "adapters").exists()


def test_existing_output_and_leftover_checkpoints(enclave_home, tiny_checkpoint, facts_file):
    run(recipe(tiny_checkpoint, facts_file))
    with pytest.raises(EnclaveError, match="already exists"):
        run(recipe(tiny_checkpoint, facts_file))
    with pytest.raises(EnclaveError, match="--resume to continue it, or --restart"):
        run(recipe(tiny_checkpoint, facts_file, overwrite="true"))
    run(recipe(tiny_checkpoint, facts_file, overwrite="true"), restart=True)


def test_full_fine_tuning_writes_a_loadable_checkpoint(enclave_home, tiny_checkpoint, facts_file):
    from transformers import AutoModelForCausalLM

    out = run(recipe(tiny_checkpoint, facts_file, **{"lora.method": "full", "train.lr": 0.001}))
    manifest = read_manifest(out)
    assert manifest.kind == "merged" and manifest.settings["config"]["lora"]["method"] == "full"
    tuned = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    moved = [n for n, p in tuned.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert "model.layers.0.mlp.down_proj.weight" in moved and "model.embed_tokens.weight" in moved


def test_answer_only_output_layer_gives_the_full_models_loss_and_gradients(tiny_checkpoint, monkeypatch):
    import peft
    from transformers import AutoModelForCausalLM

    from tune.train import loop

    torch.manual_seed(0)
    model = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_checkpoint),
        peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    ids = torch.randint(3, 100, (3, 12))
    labels = ids.clone()
    labels[:, :5], labels[1, :8], labels[2, 10:] = -100, -100, -100  # prompts of different lengths, one padded row
    mask = torch.ones_like(ids)
    mask[2, 10:] = 0
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}

    def loss_and_grads(plain: bool):
        monkeypatch.setattr(loop, "_plain_head", lambda m: plain)
        model.zero_grad()
        loss = loop.token_loss_sum(model, batch)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    (fast, g_fast), (full, g_full) = loss_and_grads(True), loss_and_grads(False)
    assert fast == pytest.approx(full, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_fast, g_full))
    monkeypatch.undo()
    assert loop._plain_head(model)  # a Llama takes the answer-only path
    model.config.final_logit_softcapping = 30.0
    assert not loop._plain_head(model)
