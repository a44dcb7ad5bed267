"""Load what `enclave eval` evaluates: a base or full checkpoint, an adapter on its base, or an
ONNX artifact (run with ONNX Runtime)."""

from __future__ import annotations

import logging
from pathlib import Path

from enclave.errors import EnclaveError
from enclave.manifest import MANIFEST, read_manifest, require_valid

log = logging.getLogger(__name__)


def load_for_eval(ref: str, adapter: str | None = None):
    """Return (model, tokenizer, label, artifact_dir or None).

    ``ref`` may itself be an adapter artifact: its base is then taken from its manifest.

    Raises:
        EnclaveError: the adapter's recorded base digest differs from the base given.
    """
    from tune.train.model import load_base

    path = Path(ref).expanduser()
    manifest = read_manifest(path) if (path / MANIFEST).is_file() else None
    if manifest is not None and manifest.kind == "onnx":
        if adapter is not None:
            raise EnclaveError(
                f"--adapter with the ONNX artifact {path}", fix="evaluate the ONNX export of the merged model instead"
            )
        from transformers import AutoTokenizer

        from enclave.evaluation.lm import OnnxLM

        require_valid(path)
        return OnnxLM(path), AutoTokenizer.from_pretrained(path, local_files_only=True), manifest.name, path
    if manifest is not None and manifest.kind == "adapter":
        adapter, ref = str(path), manifest.settings["base_model"]["ref"]
    resolved, model, tokenizer = load_base(ref)
    if adapter is None:
        return model, tokenizer, resolved.path.name, resolved.path if resolved.manifest else None
    from enclave.hf.loader import with_adapter

    adapter_dir = Path(adapter).expanduser()
    model = with_adapter(model, resolved, adapter_dir)
    return model, tokenizer, read_manifest(adapter_dir).name, adapter_dir
