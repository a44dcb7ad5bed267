"""Incremental detokenization and stop strings, on the tiny byte-level BPE."""

from __future__ import annotations

import pytest

from serve.textstream import TextStream
from tests.conftest import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _run(tok, text: str, stop=()):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(lambda x: tok.decode(x, skip_special_tokens=True), stop)
    out = []
    for i in ids:
        out.append(stream.push(i))
        if stream.stopped:
            return "".join(out), True
    return "".join(out) + stream.flush(), False


def test_deltas_rebuild_the_text_including_multibyte_characters(tok):
    text = "Blood pressure 120/80 mmHg — naïve café, 5 µg ✓ 患者"
    assert _run(tok, text) == (text, False)


def test_stop_strings_cut_before_the_match_even_across_tokens(tok):
    assert _run(tok, "The court granted the motion to dismiss.", stop=("motion",)) == ("The court granted the ", True)
    assert _run(tok, "The court granted the motion.", stop=("granted the m", "zzz")) == ("The court ", True)
    # A partial match at the end is held back, then released when generation ends without a match.
    assert _run(tok, "The court granted the mot", stop=("motion",)) == ("The court granted the mot", False)
