"""Loading a Hugging Face checkpoint from the store with transformers, the one way every stage does
it: fp32, safetensors only, local files only, ``trust_remote_code`` off, and an adapter only if it
verifies and was made for this base.
"""

from __future__ import annotations

from pathlib import Path

from enclave.deps import require, require_gptqmodel
from enclave.errors import EnclaveError
from enclave.hf.checkpoint import quantization_config
from enclave.log import quiet
from enclave.manifest import require_valid
from enclave.store import ResolvedModel, resolve_adapter


def load(model: ResolvedModel, adapter: str | None = None):
    """Load a resolved checkpoint with transformers, fp32, safetensors only, no remote code.

    Args:
        model: the base checkpoint.
        adapter: an adapter artifact (a path, or a name in $ENCLAVE_HOME/adapters) to apply, or None.

    Raises:
        EnclaveError: the adapter fails verification or was trained on another base.
    """
    torch = require("torch", "torch")
    transformers = require("transformers", "torch")
    transformers.utils.logging.disable_progress_bar()  # loading takes a second; no bar needed
    kwargs = dict(local_files_only=True, trust_remote_code=False)
    if quantization_config(model.path):
        # transformers runs GPTQ checkpoints through optimum and GPTQModel's kernels.
        require_gptqmodel("loading a GPTQ checkpoint")
        quiet("logbar")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model.path, **kwargs)
    lm = transformers.AutoModelForCausalLM.from_pretrained(
        model.path, dtype=torch.float32, use_safetensors=True, **kwargs
    )
    if adapter is not None:
        lm = with_adapter(lm, model, resolve_adapter(adapter))
    return lm.eval(), tokenizer


def with_adapter(lm, base: ResolvedModel, adapter: Path, trainable: bool = False):
    """Apply a verified adapter artifact to a loaded base, refusing one made for another base
    (``trainable``: its weights train on, as `enclave tune` with ``init_adapter`` does)."""
    manifest = require_valid(adapter)
    if manifest.kind != "adapter":
        raise EnclaveError(
            f"--adapter {adapter}: a {manifest.kind} artifact, not an adapter",
            fix="pass a directory made by `enclave tune`",
        )
    expected = manifest.settings.get("base_model", {}).get("digest")
    if expected and base.manifest and expected != base.manifest.digest:
        raise EnclaveError(
            f"adapter {adapter} was trained on base {expected}, but {base.ref} is {base.manifest.digest}",
            fix="use the base model it was trained on (its manifest.json, settings.base_model)",
        )
    peft = require("peft", "tune")
    return peft.PeftModel.from_pretrained(lm, adapter, is_trainable=trainable)
