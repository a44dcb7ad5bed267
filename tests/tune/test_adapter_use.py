import pytest

from enclave.config import load_config
from enclave.errors import EnclaveError
from enclave.hf.generate import GenerateConfig, generate
from enclave.hf.loader import load
from enclave.manifest import read_manifest
from enclave.store import resolve_model
from enclave.store.importer import import_model
from tests.conftest import build_tiny_checkpoint
from tests.tune.conftest import tiny_overrides
from tune.config import TuneConfig
from tune.run import run


def test_generate_with_adapter_and_refuse_a_foreign_base(enclave_home, tiny_checkpoint, facts_file, tmp_path):
    import_model(tiny_checkpoint, "tiny")
    adapter = run(load_config(TuneConfig, None, tiny_overrides("tiny", facts_file)))
    assert read_manifest(adapter).parents[0].digest == read_manifest(enclave_home / "models" / "tiny").digest
    lm, tok = load(resolve_model("tiny"), str(adapter))
    assert type(lm).__name__ == "PeftModelForCausalLM"
    assert len(generate(lm, tok, "What does bid mean?", GenerateConfig(max_new_tokens=3)).token_ids) <= 3
    import_model(build_tiny_checkpoint(tmp_path / "other", seed=1), "other")
    with pytest.raises(EnclaveError, match="was trained on base sha256:.*but other is sha256:"):
        load(resolve_model("other"), str(adapter))
    with pytest.raises(EnclaveError, match="a base_model artifact, not an adapter"):
        load(resolve_model("tiny"), str(enclave_home / "models" / "other"))
