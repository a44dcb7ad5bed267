from pathlib import Path

import pytest
import yaml

from enclave.config import load_config
from tune.config import TuneConfig

RECIPES = sorted((Path(__file__).parents[2] / "tune" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_and_says_how_to_run_it(path):
    load_config(TuneConfig, path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# enclave tune") and str(path.relative_to(path.parents[2])) in first
    assert yaml.safe_load(path.read_text())


def test_there_are_recipes():
    assert RECIPES
