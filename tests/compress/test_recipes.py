from pathlib import Path

import pytest

from compress.config import CompressRecipe
from enclave.config import load_config

RECIPES = sorted((Path(__file__).parents[2] / "compress" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_and_says_how_to_run_it(path):
    load_config(CompressRecipe, path)
    assert path.read_text().splitlines()[0] == f"# enclave compress --recipe {path.relative_to(path.parents[2])}"


def test_unknown_step_and_key_are_named(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("steps:\n  - step: quantise\n  - step: prune\n    sparsity: 2\n    algoritm: wanda\n")
    from enclave.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(CompressRecipe, bad)
    text = str(info.value)
    assert "steps.0" in text and "quantise" in text
    assert (
        "steps.1.prune.sparsity: Input should be less than 1" in text and "steps.1.prune.algoritm: unknown key" in text
    )


def test_artifact_names_follow_the_steps_and_their_suffixes():
    from compress.config import artifact_suffixes
    from enclave.errors import ConfigError

    steps = (
        "steps=[{step: merge, adapter: a}, {step: export, precision: int8}, {step: quantize}, "
        "{step: export, precision: int4}, {step: export, format: vllm}]"
    )
    recipe = load_config(CompressRecipe, None, [steps])
    assert artifact_suffixes(recipe.steps) == ["merge", "onnx2", "quantize", "onnx4", "vllm"]
    named = steps.replace("precision: int4}", "precision: int4, suffix: onnx-int4}")
    assert artifact_suffixes(load_config(CompressRecipe, None, [named]).steps) == [
        "merge",
        "onnx",
        "quantize",
        "onnx-int4",
        "vllm",
    ]
    with pytest.raises(ConfigError, match=r"two steps would write clinical-onnx; give them different `suffix` values"):
        load_config(
            CompressRecipe, None, ["name=clinical", "steps=[{step: export}, {step: merge, adapter: a, suffix: onnx}]"]
        )
    with pytest.raises(ConfigError, match=r"steps.0.export.suffix: String should match pattern"):
        load_config(CompressRecipe, None, ["steps=[{step: export, suffix: ../x}]"])


def test_the_demo_recipe_writes_the_artifacts_make_demo_serves_and_verifies():
    from compress.config import artifact_suffixes

    demo = load_config(CompressRecipe, Path(__file__).parents[2] / "compress" / "recipes" / "demo.yaml")
    assert artifact_suffixes(demo.steps) == ["merge", "onnx", "quantize", "onnx-int4", "vllm"]
    assert demo.steps[1].precision == "int8"  # the served artifact keeps the tuning gain (BENCHMARKS.md)
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    assert (
        "clinical-legal-,merge onnx quantize onnx-int4 vllm)" in makefile
        and "artifacts/clinical-legal-onnx " in makefile
    )
