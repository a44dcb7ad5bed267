"""`enclave tune`: LoRA fine-tuning (run), data checks (check-data), hyperparameter search (search)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "fine-tune a LoRA adapter on your data (run, the default), check data (check-data), search hyperparameters "
    "(search), judge a new adapter against the active one (gate)"
)
ACTIONS = ("run", "check-data", "search", "gate")
DEFAULT_ACTION = "run"
EPILOG = """examples:
  enclave tune --config tune/recipes/clinical_legal.yaml
  enclave tune --config r.yaml train.lr=1e-4 lora.r=16     dotted overrides win over the file
  enclave tune --config r.yaml --resume                     continue after an interruption
  torchrun --nproc_per_node=2 -m enclave tune --config r.yaml   data parallel over 2 processes
  enclave tune check-data my_data.jsonl
  enclave tune search --config r.yaml --trials 12 --sampler tpe
  enclave tune gate clinical-legal-2 --against clinical-legal --data corrections.jsonl
Shipped recipes: tune/recipes/*.yaml."""


def _keys() -> str:
    from enclave.config import describe
    from tune.config import TuneConfig

    return "recipe keys (YAML, or KEY=VALUE on the command line), with defaults:\n" + "\n".join(describe(TuneConfig))


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="tune_action", metavar="ACTION", required=True)
    p = sub.add_parser(
        "run",
        help="tune an adapter (the default action)",
        epilog=EPILOG + "\n\n" + _keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of this run")
    p.add_argument("--restart", action="store_true", help="discard an earlier run's checkpoints and start over")
    p.set_defaults(func=_run)
    p = sub.add_parser("check-data", help="validate, clean and report on a data set without training")
    p.add_argument("data", help="a JSONL or CSV file, a directory of them, or builtin:NAME")
    p.add_argument("--config", type=Path, help="a recipe whose data.* and base_model settings apply")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. data.max_length=512")
    p.add_argument(
        "--redact",
        type=Path,
        metavar="OUT",
        help="write a copy of the (JSONL) data with names, dates, ids, phones, addresses and emails replaced",
    )
    p.add_argument("--no-phi", action="store_true", help="skip the check for personal data (PHI)")
    p.set_defaults(func=_check_data)
    p = sub.add_parser("search", help="hyperparameter search with Optuna (grid, random or TPE; resumable)")
    _recipe_args(p)
    p.add_argument("--trials", type=int, default=8, help="number of trials to run now (default 8)")
    p.add_argument(
        "--sampler", choices=["tpe", "random", "grid"], default="tpe", help="how trials are chosen (default tpe)"
    )
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per trial (default 30)")
    p.add_argument(
        "--study-dir",
        type=Path,
        help="where the study (SQLite), table, plot and best recipe go (default $ENCLAVE_HOME/studies/NAME)",
    )
    p.add_argument(
        "--space",
        type=Path,
        help="a YAML search space (default: the built-in one over lr, r, alpha, dropout, batch size, warmup)",
    )
    p.set_defaults(func=_search)
    p = sub.add_parser(
        "gate",
        help="score a candidate adapter against the active one on the frozen sets; exit 1 if it fails",
        description="Both adapters are scored on each one's test split (records the candidate trained on left "
        "out) and on each --data set. The candidate passes when its exact match is nowhere more than --max-drop "
        "points below the active adapter's and no gap between groups widened by more than --max-gap-widening. "
        "The verdict goes into the candidate's manifest (metrics.gate).",
    )
    p.add_argument("candidate", help="the new adapter (a name in $ENCLAVE_HOME/adapters, or a path)")
    p.add_argument("--against", required=True, help="the active adapter it would replace")
    p.add_argument("--data", action="append", default=[], metavar="FILE", help="another set, scored whole (repeat)")
    p.add_argument("--max-drop", type=float, default=2.0, help="exact-match points it may lose on a set (default 2)")
    p.add_argument(
        "--max-gap-widening", type=float, default=5.0, help="points a gap between groups may widen (default 5)"
    )
    p.add_argument("--max-examples", type=int, help="score at most this many records per set")
    p.set_defaults(func=_gate)


def _gate(args: argparse.Namespace) -> int:
    from tune.gate import gate, print_verdict

    verdict = gate(args.candidate, args.against, args.data, args.max_drop, args.max_gap_widening, args.max_examples)
    print_verdict(verdict)
    return 0 if verdict.passed else 1


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="a YAML recipe (tune/recipes/*.yaml); defaults apply to missing keys")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=2e-4 lora.r=16")


def _load(args):
    from enclave.config import load_config
    from tune.config import TuneConfig

    return load_config(TuneConfig, args.config, args.overrides)


def _run(args: argparse.Namespace) -> int:
    from tune.run import run

    run(_load(args), resume=args.resume, restart=args.restart)
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from tune.data.prepare import prepare
    from tune.data.report import print_report
    from tune.train.model import load_tokenizer

    cfg = _load(args)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": args.data})})
    tokenizer, context = load_tokenizer(cfg.base_model)
    data = prepare(cfg.data, tokenizer, context)
    print_report(data.report(), f"Data report ({args.data}, tokens by {cfg.base_model})")
    if not args.no_phi:
        from tune.data.phi import scan
        from tune.data.records import read_records
        from tune.data.report import print_phi

        print_phi(scan(read_records(cfg.data.path, cfg.data.columns)[0]))  # every record, dropped ones too
    if args.redact is not None:
        from enclave.ui import console
        from tune.data.phi import redact_file

        changed = redact_file(Path(args.data), args.redact)
        console().print(f"wrote {args.redact}: {changed} record(s) redacted")
    return 0


def _search(args: argparse.Namespace) -> int:
    from tune.search import search

    search(
        _load(args),
        trials=args.trials,
        sampler=args.sampler,
        steps=args.steps,
        study_dir=args.study_dir,
        space_path=args.space,
    )
    return 0
