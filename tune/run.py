"""`enclave tune`: base model + data → LoRA adapter artifact, evaluated against the base.

Linear on purpose: load, check the data, train, evaluate, write the artifact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import shutil
import warnings
from importlib.metadata import version
from pathlib import Path

import torch

from enclave.errors import EnclaveError
from enclave.evaluation.compare import Forgetting
from enclave.hf.loader import with_adapter
from enclave.manifest import create_artifact
from enclave.store import home
from enclave.texts import text_file
from tune.config import TuneConfig
from tune.continual import Continual, Previous, add_rehearsal, previous
from tune.data.prepare import prepare
from tune.data.report import print_report
from tune.eval.report import markdown, print_side_by_side
from tune.eval.run import score, text_perplexity
from tune.plots import loss_curve
from tune.train import distributed
from tune.train.loop import TrainResult, total_steps, train
from tune.train.model import apply_adapter, load_base
from tune.train.preference import dpo, pairs

log = logging.getLogger(__name__)


def output_dir(cfg: TuneConfig) -> Path:
    """Where the artifact goes: ``cfg.output`` if set, else $ENCLAVE_HOME/adapters/NAME."""
    return Path(cfg.output).expanduser() if cfg.output else home() / "adapters" / cfg.name


def run_dir(cfg: TuneConfig) -> Path:
    """The run's working directory, $ENCLAVE_HOME/runs/NAME (its training checkpoints go under it)."""
    return home() / "runs" / cfg.name


def run(cfg: TuneConfig, resume: bool = False, restart: bool = False) -> Path | None:
    """Tune an adapter; return its artifact directory (None on ranks other than 0).

    Loads the base, checks the data, trains (on every rank under torchrun), then on rank 0 evaluates
    on the test split, measures forgetting on ``eval.general_text`` and writes the artifact.

    Args:
        cfg: the validated tuning config.
        resume: continue from the checkpoints an earlier run of the same name left in ``run_dir(cfg)``.
        restart: delete ``run_dir(cfg)`` (and its checkpoints) and start over.

    Returns:
        The artifact directory, ``output_dir(cfg)`` (kind ``adapter`` for LoRA, ``merged`` for full tuning);
        None on ranks other than 0.

    Raises:
        EnclaveError: the output exists and ``overwrite`` is not set, an earlier run left checkpoints and
            neither ``resume`` nor ``restart`` is set, the base model is not found or fails verification,
            the data has invalid records (DataError) or ``data.max_length`` is beyond the model's context,
            the training split is smaller than one batch, or the validation split is empty while
            ``train.patience`` is set.
    """
    ranks = distributed.init()
    out, work = output_dir(cfg), run_dir(cfg)
    _check_paths(cfg, out, work, resume, restart, ranks)
    resolved, model, tokenizer = load_base(cfg.base_model)
    prev = previous(cfg, resolved.manifest.digest if resolved.manifest else None)
    if prev is not None and prev.config.lora != cfg.lora:
        log.info("init_adapter %s: its LoRA settings are kept (r=%d)", prev.path.name, prev.config.lora.r)
        cfg = cfg.model_copy(update={"lora": prev.config.lora})
    context = getattr(model.config, "max_position_embeddings", None)
    data = prepare(cfg.data, tokenizer, context)
    if prev is not None:
        add_rehearsal(cfg, prev, data, tokenizer, context)
    rows = _preference_pairs(cfg, data)
    sft = cfg.preference.method != "dpo" or cfg.preference.after_sft
    if ranks.main:
        print_report(data.report(), f"Data report ({cfg.data.path})")
    if sft:
        _check_sizes(cfg, data)
    before = _general_perplexity(cfg, model, tokenizer) if ranks.main else None  # the base, before any step
    torch.manual_seed(cfg.train.seed)  # LoRA initialisation is random: same seed, same start
    if prev is not None:
        model = with_adapter(model, resolved, prev.path, trainable=True)
        earlier = _continual_scores(cfg, model, tokenizer, data, prev, "previous") if ranks.main else {}
    else:
        model = apply_adapter(model, cfg.lora)
    result = _train(cfg, model, data, tokenizer, work, ranks, resume) if sft else TrainResult(0, 0, float("inf"), False)
    preference = dpo(cfg, model, tokenizer, rows, work, ranks.world) if cfg.preference.method == "dpo" else None
    if not ranks.main:
        distributed.finish(ranks)
        return None
    evals = _evaluate(cfg, model, tokenizer, data, continued=prev is not None)
    forgetting = _forgetting(cfg, before, model, tokenizer, evals)
    continual = None
    if prev is not None:
        now = _continual_scores(cfg, model, tokenizer, data, prev, "adapter")
        continual = Continual(prev, earlier, now)
    path = _write(cfg, out, resolved, model, tokenizer, data, result, evals, forgetting, continual, preference)
    distributed.finish(ranks)
    _summary(path, result, evals, forgetting, continual, preference)
    return path


def _preference_pairs(cfg: TuneConfig, data) -> list[dict]:
    """With preference.method=dpo: the training split's preference records as TRL's pairs, taken
    out of the examples the usual training sees (they train by DPO instead)."""
    if cfg.preference.method != "dpo":
        return []
    train = list(zip(data.records["train"], data.examples["train"]))
    data.records["train"] = [r for r, _ in train if r.rejected is None]
    data.examples["train"] = [e for r, e in train if r.rejected is None]
    return pairs(cfg, [r for r, _ in train if r.rejected is not None])


def _check_paths(cfg, out: Path, work: Path, resume: bool, restart: bool, ranks) -> None:
    if out.exists() and not cfg.overwrite:
        raise EnclaveError(
            f"output {out} already exists", fix="set name= to another name, output= to another path, or overwrite=true"
        )
    has_ckpt = (work / "checkpoints").is_dir() and any((work / "checkpoints").glob("step-*"))
    if has_ckpt and not (resume or restart):
        raise EnclaveError(
            f"an earlier run of {cfg.name!r} left checkpoints in {work / 'checkpoints'}",
            fix="pass --resume to continue it, or --restart to discard them and start over",
        )
    if restart and ranks.main:
        shutil.rmtree(work, ignore_errors=True)
    distributed.barrier(ranks)
    work.mkdir(parents=True, exist_ok=True)


def _check_sizes(cfg: TuneConfig, data) -> None:
    n = len(data.examples["train"])
    if n < cfg.train.batch_size:
        raise EnclaveError(
            f"the training split has {n} examples, fewer than one batch (train.batch_size={cfg.train.batch_size})",
            fix=f"add data, or set train.batch_size={max(1, n)} or less",
        )
    if not data.examples["validation"] and cfg.train.patience:
        raise EnclaveError(
            "the validation split is empty, so early stopping cannot work",
            fix="add records with split=validation, or set train.patience=null",
        )


def _train(cfg, model, data, tokenizer, work: Path, ranks, resume: bool) -> TrainResult:
    from tqdm import tqdm

    steps = total_steps(len(data.examples["train"]), cfg.train)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "training %s parameters for %d steps on %d examples (%d rank(s))",
        f"{n_params:,}",
        steps,
        len(data.examples["train"]),
        ranks.world,
    )
    bar = tqdm(total=steps, desc="tune", unit="step", disable=not ranks.main, dynamic_ncols=True)

    def on_step(row, state):
        bar.n = row["step"]
        tps = state["tokens"] / max(state["seconds"], 1e-9)
        val = f"{state['evals'][-1]['val_loss']:.3f}" if state["evals"] else "-"
        bar.set_postfix(loss=f"{row['loss']:.3f}", val=val, tok_s=f"{tps:.0f}", refresh=False)
        bar.refresh()

    result = train(
        model,
        data.examples["train"],
        data.examples["validation"],
        tokenizer.pad_token_id,
        cfg.train,
        work,
        ranks,
        resume,
        on_step,
    )
    bar.close()
    return result


def _evaluate(cfg, model, tokenizer, data, continued: bool = False) -> list:
    records, examples = data.records["test"], data.examples["test"]
    if not records:
        if continued:  # corrections are all training data; the earlier adapter's frozen split is scored
            log.info("the new data has no test split: scored on the earlier adapter's frozen test split")
        else:
            log.warning("the test split is empty: no evaluation")
        return []
    runs = [("base", True)] if cfg.eval.compare_base and cfg.lora.method == "lora" else []
    runs.append(("adapter" if cfg.lora.method == "lora" else "tuned", False))
    return [_score(cfg, model, tokenizer, records, examples, label, disabled) for label, disabled in runs]


def _score(cfg, model, tokenizer, records, examples, label: str, disabled: bool = False, split: str = ""):
    """One model's scores on a test split (at most eval.max_examples of it); ``disabled``: the base."""
    with model.disable_adapter() if disabled else contextlib.nullcontext():
        return score(cfg, model, tokenizer, records, examples, label, f"eval {label}{split}")


def _continual_scores(cfg, model, tokenizer, data, prev: Previous, label: str) -> dict:
    """Scores on the new test split and on the earlier adapter's frozen test split."""
    scores = {}
    new = data.records["test"], data.examples["test"]
    if new[0]:
        scores["new"] = _score(cfg, model, tokenizer, *new, label, split=" (new)")
    if prev.frozen_records:
        scores["frozen"] = _score(
            cfg, model, tokenizer, prev.frozen_records, prev.frozen_examples, label, split=" (frozen)"
        )
    model.train()
    return scores


def _general_perplexity(cfg, model, tokenizer) -> float | None:
    """Perplexity of the held-out general text (eval.general_text), the definition compress reports."""
    if cfg.eval.general_text is None:
        return None
    text = text_file(cfg.eval.general_text).read_text(encoding="utf-8")
    model.eval()
    return text_perplexity(model, tokenizer, text, max_tokens=cfg.eval.general_max_tokens)


def _forgetting(cfg, before: float | None, model, tokenizer, evals) -> Forgetting | None:
    """General-text perplexity before and after tuning, beside the task scores; a warning past the threshold."""
    if before is None:
        return None
    forgetting = Forgetting(
        cfg.eval.general_text, before, _general_perplexity(cfg, model, tokenizer), cfg.eval.forgetting_threshold
    )
    for r in evals:
        r.metrics["general_perplexity"] = forgetting.before if r.label == "base" else forgetting.after
    warning = forgetting.warning(evals[-1].label if evals else cfg.name)
    if warning:
        log.warning("%s", warning)
        if evals:
            evals[-1].warnings.append(warning)
    return forgetting


def _write(
    cfg,
    out: Path,
    resolved,
    model,
    tokenizer,
    data,
    result: TrainResult,
    evals,
    forgetting: Forgetting | None,
    continual: Continual | None = None,
    preference: dict | None = None,
) -> Path:
    parents = [resolved.manifest.as_parent("base")] if resolved.manifest else []
    if continual is not None:
        parents.append(continual.prev.manifest.as_parent("init_adapter"))
    base = {"ref": cfg.base_model, "digest": resolved.manifest.digest if resolved.manifest else None}
    settings = {
        "config": cfg.model_dump(mode="json"),
        "base_model": base,
        "data_digest": data.digest,
        "versions": {p: version(p) for p in ("torch", "transformers", "peft")},
    }
    kind = "adapter" if cfg.lora.method == "lora" else "merged"
    with create_artifact(out, kind, cfg.name, parents=parents, settings=settings, overwrite=cfg.overwrite) as draft:
        if kind == "adapter":
            with warnings.catch_warnings():
                # A continued adapter names its base by store name, not a path: PEFT (offline) cannot look
                # up its config.json and says so; the vocabulary is never resized here, as it assumes.
                warnings.filterwarnings("ignore", message="Could not find a config file in")
                model.save_pretrained(draft.path, safe_serialization=True)
            _name_base(draft.path / "adapter_config.json", cfg.base_model)
        else:
            model.save_pretrained(draft.path, safe_serialization=True)
            tokenizer.save_pretrained(draft.path)
        loss_curve(result.history, result.evals, draft.path / "loss_curve.png", f"{cfg.name}: LoRA on {cfg.base_model}")
        (draft.path / "training_log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in result.history))
        (draft.path / "data_report.json").write_text(json.dumps(data.report(), indent=2))
        if evals:
            (draft.path / "eval_report.md").write_text(markdown(evals, f"{cfg.name}: test split of {cfg.data.path}"))
        draft.metrics.update(_metrics(result, evals))
        if forgetting:
            draft.metrics["forgetting"] = forgetting.to_dict()
        if continual is not None:
            draft.metrics["continual"] = continual.to_dict()
        if preference is not None:
            draft.metrics["dpo"] = preference
    return out


def _name_base(path: Path, base: str) -> None:
    """Record the base by its store name, not this machine's path (the manifest holds its digest)."""
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _metrics(result: TrainResult, evals) -> dict:
    m = {
        "steps": result.steps,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "final_train_loss": result.history[-1]["loss"] if result.history else None,
        "best_val_loss": None if result.best_val_loss == float("inf") else result.best_val_loss,
        "train_tokens_per_second": result.tokens_per_second,
        "train_seconds": result.seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    for r in evals:
        m[f"eval_{r.label}"] = r.to_dict()
    return m


def _summary(
    path: Path,
    result: TrainResult,
    evals,
    forgetting: Forgetting | None,
    continual: Continual | None = None,
    preference: dict | None = None,
) -> None:
    from rich.table import Table

    from enclave.ui import console

    if evals:
        print_side_by_side(evals)
    t = Table(title="Tuning run", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("adapter", str(path))
    best = f" (best {result.best_step}{', stopped early' if result.stopped_early else ''})" if result.evals else ""
    t.add_row("steps", f"{result.steps}{best}")  # no validation split: no best step, the last one is the result
    if forgetting:
        t.add_row(
            "general text perplexity",
            f"{forgetting.before:.2f} -> {forgetting.after:.2f} ({forgetting.ratio:.2f}x; {forgetting.text})",
        )
    if continual is not None:
        for row in continual.rows():
            t.add_row(*row)
    if preference is not None and preference["final_loss"] is not None:
        t.add_row(
            "DPO (TRL)",
            f"{preference['pairs']} pairs, {preference['steps']} steps: loss {preference['first_loss']:.3f} -> "
            f"{preference['final_loss']:.3f}, reward accuracy {preference['final_reward_accuracy'] or 0:.2f}",
        )
    if result.best_val_loss != float("inf"):
        t.add_row("best validation loss", f"{result.best_val_loss:.4f}")
    t.add_row("throughput", f"{result.tokens_per_second:.0f} tokens/s over {result.seconds:.0f} s")
    t.add_row("peak memory", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GB")
    t.add_row("loss curve", str(path / "loss_curve.png"))
    console().print(t)
