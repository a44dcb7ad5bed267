import pytest

from enclave.errors import EnclaveError
from tests.conftest import build_tokenizer
from tune.config import DataConfig
from tune.data.prepare import prepare
from tune.data.records import Record
from tune.data.tokenize import IGNORE, encode


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_loss_only_on_answer_and_end_of_turn(tok):
    r = Record([{"role": "user", "content": "bid?"}, {"role": "assistant", "content": "twice a day"}], "x:1")
    ex = encode(tok, r, system="Be brief.")
    prompt = tok.decode([t for t, label in zip(ex.input_ids, ex.labels) if label == IGNORE])
    answer = tok.decode([label for label in ex.labels if label != IGNORE])
    assert (
        prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nbid?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert answer == "twice a day<|im_end|>"


def test_prepare_drops_over_length_and_refuses_beyond_context(tok, facts_file):
    data = prepare(DataConfig(path=str(facts_file), max_length=40), tok, context_length=128)
    report = data.report()
    assert report["dropped"]["too_long"] > 0
    assert all(e.length <= 40 for split in data.examples.values() for e in split)
    assert sum(report["splits"].values()) + report["dropped"]["too_long"] == 48
    with pytest.raises(EnclaveError, match="data.max_length 512 is beyond the model's context length 128"):
        prepare(DataConfig(path=str(facts_file), max_length=512), tok, context_length=128)
