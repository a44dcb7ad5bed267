"""The quantize step: check the settings against the model, calibrate, quantize, write the artifact."""

from __future__ import annotations

import logging
import math
import re
import tempfile
from pathlib import Path

from compress.io import lineage
from compress.quantize import gptq
from compress.quantize.config import QuantizeSettings
from compress.text import calibration_batches
from enclave.deps import require
from enclave.errors import EnclaveError
from enclave.hf.checkpoint import safetensors_header, weight_files
from enclave.manifest import create_artifact
from enclave.store import resolve_model

log = logging.getLogger(__name__)
_DECODER_WEIGHT = re.compile(r"\.layers\.\d+\..+\.weight$")


def input_widths(root: Path) -> set[int]:
    """Input widths of the decoder layers' linear weights (the layers GPTQ quantizes), from headers only."""
    widths = set()
    for f in weight_files(root):
        for name, meta in safetensors_header(f).items():
            if _DECODER_WEIGHT.search(name) and isinstance(meta, dict) and len(meta.get("shape", [])) == 2:
                widths.add(meta["shape"][1])
    return widths


def check_group_size(root: Path, group_size: int) -> None:
    """Refuse a group size that does not divide every quantized layer's input width, naming ones that do."""
    widths = input_widths(root)
    if group_size == -1 or not widths or all(w % group_size == 0 for w in widths):
        return
    common = math.gcd(*widths)
    fits = [g for g in (256, 128, 64, 32, 16) if common % g == 0]
    raise EnclaveError(
        f"group_size {group_size} does not divide the input widths {sorted(widths)} of {root.name}'s layers",
        fix=f"set group_size to {' or '.join(map(str, fits[:2])) if fits else -1} (a divisor of {common}), "
        "or -1 for one scale per row",
    )


def run(source: str, settings: QuantizeSettings, out: Path, name: str, overwrite: bool = False) -> Path:
    """Write a GPTQ-format checkpoint of ``source`` (GPTQ or round-to-nearest at the same bits and groups).

    The manifest's ``settings.calibration.read`` lists the sources read, their splits, records and tokens.

    Args:
        source: the model to quantize: a store name or a checkpoint or artifact path (not a quantized one).
        settings: the quantize settings (method, bits, group size, calibration).
        out: the artifact directory to create (kind ``quantized``).
        name: the artifact's name, recorded in its manifest.
        overwrite: replace an existing artifact at ``out``.

    Returns:
        ``out``, the written artifact.

    Raises:
        EnclaveError: the group size does not fit the model, the calibration text is too short,
            or GPTQModel is missing; also: the source is not found, fails verification or is already
            quantized, or ``out`` exists and ``overwrite`` is not set.
    """
    resolved = resolve_model(source)
    if resolved.manifest and resolved.manifest.kind == "quantized":
        raise EnclaveError(f"{source} is already quantized", fix="quantize the unquantized artifact it came from")
    check_group_size(resolved.path, settings.group_size)
    gptq.gptqmodel()  # fail before calibrating when it is missing
    calibration, recorded = None, settings.model_dump(mode="json")
    recorded["calibration"]["read"] = None  # round-to-nearest reads no text
    if settings.method == "gptq":
        transformers = require("transformers", "torch")
        tokenizer = transformers.AutoTokenizer.from_pretrained(resolved.path, local_files_only=True)
        cal = settings.calibration
        batches = calibration_batches(tokenizer, cal.source, cal.samples, cal.seq_len, cal.split)
        calibration, recorded["calibration"]["read"] = batches.ids.tolist(), batches.manifest()
    log.info(
        "quantizing %s: %s %d-bit, group %d", resolved.path.name, settings.method, settings.bits, settings.group_size
    )
    with create_artifact(
        out, "quantized", name, parents=lineage(resolved, "source"), settings=recorded, overwrite=overwrite
    ) as draft:
        # Named like the draft (".NAME.tmp-..."), so a rerun after kill -9 removes it with the draft.
        with tempfile.TemporaryDirectory(prefix=f"{draft.path.name}-offload-", dir=draft.path.parent) as scratch:
            losses = gptq.quantize(resolved.path, settings, calibration, draft.path, Path(scratch))
        draft.metrics.update(
            bits=settings.bits,
            group_size=settings.group_size,
            method=settings.method,
            quantized_layers=len(losses) or None,
            quant_loss_per_layer=losses or None,
        )
    return out
