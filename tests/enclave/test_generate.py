import pytest

from enclave.config import load_config
from enclave.errors import ConfigError
from enclave.hf.generate import GenerateConfig, encode, generate
from enclave.hf.loader import load
from enclave.store import resolve_model


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load(resolve_model(str(tiny_checkpoint)))


def test_chat_template_applied_once(tiny):
    _, tok = tiny
    ids = encode(tok, "hello", GenerateConfig(system="be brief"))
    text = tok.decode(ids)
    assert text == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3


def test_greedy_is_deterministic_and_streams_everything(tiny):
    lm, tok = tiny
    pieces = []
    cfg = GenerateConfig(max_new_tokens=12)
    first = generate(lm, tok, "The patient", cfg, on_text=pieces.append)
    second = generate(lm, tok, "The patient", cfg)
    assert first.token_ids == second.token_ids and len(first.token_ids) == 12
    assert "".join(pieces) == first.text
    assert first.finish_reason in ("length", "stop")


def test_sampling_depends_on_seed(tiny):
    lm, tok = tiny
    runs = [
        generate(lm, tok, "court", GenerateConfig(max_new_tokens=16, temperature=5.0, seed=s)).token_ids
        for s in (1, 1, 2)
    ]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_invalid_settings_named():
    with pytest.raises(ConfigError, match="top_p: Input should be less than or equal to 1"):
        load_config(GenerateConfig, None, ["top_p=1.5"])
