"""`enclave tune search`: hyperparameter search with Optuna.

Each trial is a short run (``--steps``) scored by validation loss, reported at every
evaluation so the median pruner can stop poor trials early. The study lives in a SQLite
file and resumes where it stopped; the output is a trials table, a plot and the best
configuration as a ready recipe.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import yaml

from enclave.atomic import atomic_write_bytes
from enclave.config import apply_overrides, read_yaml
from enclave.errors import ConfigError
from enclave.store import home
from tune.config import TuneConfig

log = logging.getLogger(__name__)

# key: [low, high, "log"] for floats, [low, high] for ints, or a list of choices.
DEFAULT_SPACE = {
    "train.lr": {"float": [1e-5, 1e-3], "log": True},
    "lora.r": {"choices": [4, 8, 16]},
    "lora.alpha": {"choices": [8.0, 16.0, 32.0]},
    "lora.dropout": {"float": [0.0, 0.1]},
    "train.batch_size": {"choices": [4, 8, 16]},
    "train.warmup_steps": {"int": [0, 10]},
}


def load_space(path: Path | None) -> dict:
    """The search space: the YAML file at ``path``, or ``DEFAULT_SPACE`` when there is none.

    Raises:
        ConfigError: the file cannot be read as a YAML mapping, or a key does not give exactly one of
            ``float``, ``int`` or ``choices`` (all such keys listed).
    """
    space = read_yaml(path) if path else DEFAULT_SPACE
    problems = []
    for key, spec in space.items():
        if not isinstance(spec, dict) or len({"float", "int", "choices"} & spec.keys()) != 1:
            problems.append(f"{key}: give exactly one of float: [low, high], int: [low, high] or choices: [...]")
    if problems:
        raise ConfigError(str(path), problems)
    return space


def _suggest(trial, key: str, spec: dict):
    if "choices" in spec:
        return trial.suggest_categorical(key, spec["choices"])
    if "int" in spec:
        return trial.suggest_int(key, *spec["int"])
    return trial.suggest_float(key, *spec["float"], log=bool(spec.get("log")))


def _grid(space: dict) -> dict:
    """Grid values: choices as given; numeric ranges as their ends (and the geometric/arith. middle)."""
    grid = {}
    for key, spec in space.items():
        if "choices" in spec:
            grid[key] = list(spec["choices"])
        elif "int" in spec:
            lo, hi = spec["int"]
            grid[key] = sorted({lo, (lo + hi) // 2, hi})
        else:
            lo, hi = spec["float"]
            mid = math.sqrt(lo * hi) if spec.get("log") and lo > 0 else (lo + hi) / 2
            grid[key] = [lo, mid, hi]
    return grid


def search(
    base: TuneConfig,
    trials: int,
    sampler: str,
    steps: int,
    study_dir: Path | None = None,
    space_path: Path | None = None,
):
    """Run ``trials`` more trials of the study; write the table, plot and best recipe.

    The study is stored in ``study.sqlite`` and resumed when it exists; each trial trains from the base
    for ``steps`` steps under ``trial-N`` and is scored by its best validation loss.

    Args:
        base: the tuning config each trial starts from (the searched keys are overridden).
        trials: how many trials to add to the study.
        sampler: ``tpe``, ``random`` or ``grid`` (the grid: choices, and each range's ends and middle).
        steps: training steps per trial.
        study_dir: the study's folder (default $ENCLAVE_HOME/studies/NAME); created if missing.
        space_path: a YAML search space, or None for ``DEFAULT_SPACE``.

    Returns:
        The tuning config of the best trial, also written to ``best.yaml`` in the study folder beside
        ``trials.png``.

    Raises:
        ConfigError: the search space file is invalid.
        EnclaveError: the base model is not found or fails verification, or the data has invalid
            records (DataError) or ``data.max_length`` beyond the model's context.
    """
    import optuna

    from tune.data.prepare import prepare
    from tune.train import distributed
    from tune.train.loop import train
    from tune.train.model import apply_adapter, load_base, load_tokenizer

    space = load_space(space_path)
    study_dir = Path(study_dir or home() / "studies" / base.name)
    study_dir.mkdir(parents=True, exist_ok=True)
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=base.train.seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=base.train.seed),
        "grid": lambda: optuna.samplers.GridSampler(_grid(space), seed=base.train.seed),
    }
    study = optuna.create_study(
        study_name=base.name,
        storage=f"sqlite:///{study_dir / 'study.sqlite'}",
        load_if_exists=True,
        direction="minimize",
        sampler=samplers[sampler](),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    tokenizer, context = load_tokenizer(base.base_model)
    data = prepare(base.data, tokenizer, context)
    ranks = distributed.Ranks()

    def objective(trial):
        values = {k: _suggest(trial, k, spec) for k, spec in space.items()}
        overrides = [f"{k}={v}" for k, v in values.items()] + [
            f"train.max_steps={steps}",
            f"train.eval_every={max(1, steps // 3)}",
            "train.patience=null",
        ]
        cfg = TuneConfig.model_validate(apply_overrides(base.model_dump(), overrides))
        import torch

        _, model, _ = load_base(base.base_model)
        torch.manual_seed(cfg.train.seed)
        model = apply_adapter(model, cfg.lora)
        reports = []

        def on_step(row, state):
            if state["evals"] and state["evals"][-1]["step"] == row["step"]:
                reports.append(state["evals"][-1]["val_loss"])
                trial.report(reports[-1], row["step"])
                if trial.should_prune():
                    raise optuna.TrialPruned()

        result = train(
            model,
            data.examples["train"],
            data.examples["validation"],
            tokenizer.pad_token_id,
            cfg.train,
            study_dir / f"trial-{trial.number}",
            ranks,
            on_step=on_step,
        )
        return result.best_val_loss

    study.optimize(objective, n_trials=trials, catch=())
    return _outputs(study, base, study_dir)


def _outputs(study, base: TuneConfig, study_dir: Path):
    import optuna
    from rich.table import Table

    from enclave.ui import console

    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    keys = sorted({k for t in done for k in t.params})
    table = Table(title=f"Study {study.study_name}: {len(done)} trials ({study_dir / 'study.sqlite'})")
    for col in ["trial", "state", "val loss", *keys]:
        table.add_column(col, justify="right")
    for t in done:
        value = f"{t.value:.4f}" if t.value is not None else "-"
        table.add_row(str(t.number), t.state.name.lower(), value, *[f"{t.params.get(k, '')}" for k in keys])
    console().print(table)
    best = study.best_trial
    cfg = TuneConfig.model_validate(apply_overrides(base.model_dump(), [f"{k}={v}" for k, v in best.params.items()]))
    header = (
        f"# Best of study {study.study_name} (trial {best.number}, validation loss {best.value:.4f}).\n"
        f"# Run: enclave tune --config {study_dir / 'best.yaml'}\n"
    )
    atomic_write_bytes(
        study_dir / "best.yaml", (header + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)).encode()
    )
    _plot(done, study_dir / "trials.png")
    console().print(f"best recipe: {study_dir / 'best.yaml'}   plot: {study_dir / 'trials.png'}")
    return cfg


def _plot(trials, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    xs = [t.number for t in trials if t.value is not None]
    ys = [t.value for t in trials if t.value is not None]
    ax.scatter(xs, ys, label="trial (validation loss)")
    best = [min(ys[: i + 1]) for i in range(len(ys))]
    ax.step(xs, best, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
