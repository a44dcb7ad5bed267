"""Optional dependencies load without printing: only the answer goes to stdout."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is None, reason="GPTQModel is not installed")
def test_peft_loads_without_gptqmodels_banner():
    """PEFT imports GPTQModel when it is installed (as it wraps a model's layers), and GPTQModel
    prints a banner and environment notes on import: they reached `enclave tune`'s stdout."""
    code = (
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "from enclave.deps import require\n"
        "model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,"
        " num_attention_heads=2, num_key_value_heads=2))\n"
        "peft = require('peft', 'tune')\n"
        "peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=['q_proj']))\n"  # PEFT imports GPTQModel here
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "GPT-QModel" not in proc.stderr
