import pytest
import torch
from transformers import AutoModelForCausalLM

from compress import registry
from compress.config import DistilSettings, PruneSettings
from compress.distil.loss import distillation_loss
from enclave.errors import EnclaveError
from enclave.importer import import_model
from enclave.manifest import read_manifest, verify

FAST = dict(steps=12, batch_size=4, seq_len=32, lr=3e-3, data=["builtin:clinical_legal"])


@pytest.fixture()
def pruned(enclave_home, tiny_checkpoint, tmp_path):
    import_model(tiny_checkpoint, "tiny")
    return registry.get("prune").run("tiny", PruneSettings(algorithm="magnitude", sparsity=0.6), tmp_path / "pruned", "pruned")


def test_loss_is_zero_kl_when_student_equals_teacher():
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    loss, kl, ce = distillation_loss(logits, logits.clone(), labels, temperature=2.0, alpha=1.0)
    assert kl == pytest.approx(0.0, abs=1e-6) and loss.item() == pytest.approx(0.0, abs=1e-6)
    assert ce == pytest.approx(torch.nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1)).item())


def test_distil_recovers_and_keeps_the_zeros(enclave_home, pruned, tmp_path):
    out = registry.get("distil").run(str(pruned), DistilSettings(**FAST), tmp_path / "distilled", "distilled")
    m, problems = verify(out)
    assert problems == [] and m.kind == "distilled"
    assert [p.role for p in m.parents] == ["student", "teacher"]
    assert m.parents[1].digest == read_manifest(enclave_home / "models" / "tiny").digest  # found by lineage
    mm = m.metrics
    assert mm["masked_matrices"] == 14 and len(mm["history"]) == 12
    lost = mm["perplexity_before"] - mm["perplexity_teacher"]  # a random tiny teacher may be worse than its pruned copy
    expected = (mm["perplexity_before"] - mm["perplexity_after"]) / lost if lost > 0 else None
    assert mm["recovered_share"] == pytest.approx(expected)
    before = AutoModelForCausalLM.from_pretrained(pruned)
    after = AutoModelForCausalLM.from_pretrained(out)
    w0, w1 = before.model.layers[0].mlp.up_proj.weight, after.model.layers[0].mlp.up_proj.weight
    assert torch.equal(w0 == 0, w1 == 0) and not torch.equal(w0, w1)


def test_shallower_student(enclave_home, pruned, tmp_path):
    settings = DistilSettings(teacher="tiny", student_layers=1, **{**FAST, "alpha": 1.0, "steps": 20})
    out = registry.get("distil").run("tiny", settings, tmp_path / "s", "s")
    m = read_manifest(out).metrics
    assert m["kept_layers"] == [0]
    kl = [h["kl"] for h in m["history"]]
    assert sum(kl[-4:]) < 0.7 * sum(kl[:4])  # pure distillation: the student moves towards the teacher
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 1
    with pytest.raises(EnclaveError, match="no teacher set"):
        registry.get("distil").run("tiny", DistilSettings(**FAST), tmp_path / "x", "x")
