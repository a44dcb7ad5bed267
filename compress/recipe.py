"""`enclave compress --recipe r.yaml`: run the steps in order, each on the previous artifact,
then measure everything in one report."""

from __future__ import annotations

import logging
from pathlib import Path

from compress import registry
from compress.config import CompressRecipe, artifact_suffixes
from compress.report import report
from enclave.store import home

log = logging.getLogger(__name__)


def artifacts_dir(recipe: CompressRecipe) -> Path:
    """Where the recipe's artifacts go: ``output_dir`` if set, else $ENCLAVE_HOME/artifacts."""
    return Path(recipe.output_dir).expanduser() if recipe.output_dir else home() / "artifacts"


def run_recipe(recipe: CompressRecipe, measure: bool = True) -> list[Path]:
    """Run every step; return the artifact paths (the report goes next to them).

    Each step reads the artifact of the step before it, except that exports are leaves: a step
    after an export reads what the export read, so one recipe can write ONNX and vLLM artifacts.

    Args:
        recipe: the validated recipe: starting model, steps, output directory, overwrite, eval settings.
        measure: after the last step, measure the starting model and every artifact in one report
            (written to ``NAME-report`` beside the artifacts).

    Returns:
        The artifact directories, one per step in recipe order (``NAME-SUFFIX`` under ``artifacts_dir``).

    Raises:
        EnclaveError: from the first step that fails (artifacts of the steps before it stay), or from
            the report; an unknown step name (the known ones listed).
    """
    root = artifacts_dir(recipe)
    source, produced = recipe.model, []
    suffixes = artifact_suffixes(recipe.steps)  # ...-merge, ...-onnx, ...-vllm
    for i, settings in enumerate(recipe.steps):
        name = f"{recipe.name}-{suffixes[i]}"
        log.info("step %d/%d: %s -> %s", i + 1, len(recipe.steps), settings.step, root / name)
        registry.get(settings.step).run(source, settings, root / name, name, recipe.overwrite)
        produced.append(root / name)
        if settings.step != "export":
            source = str(root / name)
    if measure:
        report([recipe.model, *map(str, produced)], recipe.eval, root / f"{recipe.name}-report")
    return produced
