import sqlite3

import yaml

from enclave.config import load_config
from tests.tune.conftest import tiny_overrides
from tune.config import TuneConfig
from tune.search import search


def test_search_persists_resumes_and_writes_a_recipe(enclave_home, tiny_checkpoint, facts_file, tmp_path):
    base = load_config(TuneConfig, None, tiny_overrides(tiny_checkpoint, facts_file))
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {float: [0.001, 0.05], log: true}\nlora.r: {choices: [2, 4]}\n")
    study = tmp_path / "study"
    search(base, trials=2, sampler="random", steps=3, study_dir=study, space_path=space)
    search(base, trials=1, sampler="random", steps=3, study_dir=study, space_path=space)  # resumes the same study
    with sqlite3.connect(study / "study.sqlite") as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == 3
    best = study / "best.yaml"
    assert best.read_text().startswith("# Best of study tiny")
    cfg = load_config(TuneConfig, best)
    assert cfg.lora.r in (2, 4) and 0.001 <= cfg.train.lr <= 0.05
    assert (study / "trials.png").stat().st_size > 1000
    assert yaml.safe_load(best.read_text())["name"] == "tiny"
