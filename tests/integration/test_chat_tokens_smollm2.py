"""Special tokens typed into chat content stay text on SmolLM2's own tokenizer, and ordinary chats
give the ids transformers gives (the checks of tests/serve/test_tokenizer.py on the real model)."""

from __future__ import annotations

import pytest

from tests.serve.test_tokenizer import _check

pytestmark = pytest.mark.slow


def test_smollm2_chats_match_transformers_and_typed_tokens_stay_text(store):
    _check(store / "models" / "smollm2-135m-instruct")
