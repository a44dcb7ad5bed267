"""Load what `enclave eval` evaluates: a base or full checkpoint, an adapter on its base, or an
ONNX artifact (run with ONNX Runtime)."""

from __future__ import annotations

import logging
from pathlib import Path

from enclave.errors import EnclaveError
from enclave.lineage import adapter_fits
from enclave.manifest import MANIFEST, read_manifest, require_valid

log = logging.getLogger(__name__)


def load_for_eval(ref: str, adapter: str | None = None):
    """Return (model, tokenizer, label, artifact_dir or None).

    ``ref`` may itself be an adapter artifact: its base is then taken from its manifest. An
    adapter on an ONNX artifact runs unmerged on onnxruntime, as the serving engine runs it (the
    ONNX artifact must be an export of the adapter's base: a quantized one is accepted).

    Raises:
        EnclaveError: the adapter's recorded base digest differs from the base given.
    """
    from tune.train.model import load_base

    path = Path(ref).expanduser()
    manifest = read_manifest(path) if (path / MANIFEST).is_file() else None
    if manifest is not None and manifest.kind == "onnx":
        from transformers import AutoTokenizer

        from enclave.evaluation.lm import OnnxLM

        require_valid(path)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if adapter is None:
            return OnnxLM(path), tokenizer, manifest.name, path
        adapter_dir = Path(adapter).expanduser()
        adapter_manifest = require_valid(adapter_dir)
        if not adapter_fits(adapter_manifest, manifest, path):
            base = adapter_manifest.settings.get("base_model", {})
            raise EnclaveError(
                f"--adapter {adapter_dir}: trained on {base.get('ref')} ({str(base.get('digest'))[:19]}), "
                f"which is not in the lineage of {path}",
                fix="evaluate it on an export of the model it was trained on",
            )
        try:
            lm = OnnxLM(path, adapter=adapter_dir)
        except ValueError as exc:  # onnx_lora.AdapterError: a LoRA the graph branches cannot run exactly
            raise EnclaveError(str(exc), fix="evaluate the ONNX export of the merged model instead") from None
        # not recorded in either manifest: the scores belong to the pair, not to one artifact
        return lm, tokenizer, f"{adapter_manifest.name} on {manifest.name}", None
    if manifest is not None and manifest.kind == "adapter":
        adapter, ref = str(path), manifest.settings["base_model"]["ref"]
    resolved, model, tokenizer = load_base(ref)
    if adapter is None:
        return model, tokenizer, resolved.path.name, resolved.path if resolved.manifest else None
    from enclave.hf.loader import with_adapter

    adapter_dir = Path(adapter).expanduser()
    model = with_adapter(model, resolved, adapter_dir)
    return model, tokenizer, read_manifest(adapter_dir).name, adapter_dir
