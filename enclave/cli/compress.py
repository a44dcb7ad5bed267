"""`enclave compress`: merge, prune, distil, quantize and export, chained by a recipe, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from compress import registry

METHODS = [m.name for m in registry.methods()]  # every compress/<method>/ folder, in pipeline order
HELP = f"compress a model: run a recipe (the default), or one step ({', '.join(METHODS)}), or report on artifacts"
ACTIONS = ("run", *METHODS, "report")
DEFAULT_ACTION = "run"
EPILOG = """examples:
  enclave compress --recipe compress/recipes/demo.yaml
  enclave compress merge --model smollm2-135m-instruct --adapter ~/.cache/enclave/adapters/clinical-legal --out merged/
  enclave compress prune --model merged/ --algorithm sparsegpt --sparsity 0.5 --out pruned/
  enclave compress prune --model merged/ --algorithm wanda --pattern 2:4 --out pruned-24/
  enclave compress distil --model pruned/ --steps 40 --out distilled/          teacher: pruned/'s parent
  enclave compress quantize --model merged/ --bits 4 --group-size 64 --out gptq/
  enclave compress quantize --model merged/ --method rtn --group-size 64 --out rtn/     the baseline
  enclave compress export --model gptq/ --format onnx --precision int4 --out onnx/
  enclave compress export --model gptq/ --format vllm --adapters clinical-legal --out vllm/
  enclave compress report merged/ pruned/ --out report/"""


def register(parser: argparse.ArgumentParser) -> None:
    from enclave.config import add_config_flags

    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="compress_action", metavar="ACTION", required=True)
    p = sub.add_parser("run", help="run a recipe: its steps in order, then the report (the default action)")
    p.add_argument("--recipe", type=Path, required=True, help="a YAML recipe (compress/recipes/*.yaml)")
    p.add_argument("--no-report", action="store_true", help="skip the measurements at the end")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. overwrite=true")
    p.set_defaults(func=_run)
    for method in registry.methods():
        p = sub.add_parser(method.name, help=method.help, description=method.help)
        p.add_argument("--model", required=True, help="a store name, checkpoint path or artifact directory")
        p.add_argument("--out", type=Path, required=True, help="the artifact directory to write")
        p.add_argument("--overwrite", action="store_true", help="replace an existing artifact at --out")
        add_config_flags(p, method.settings)
        p.add_argument(
            "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. calibration.samples=32"
        )
        p.set_defaults(func=_step, step=method.name, settings=method.settings)
    p = sub.add_parser(
        "report",
        help="measure artifacts side by side: size, sparsity, perplexity, task scores "
        "and the share of the tuning gain kept, speed",
        description="Measure artifacts side by side. The first path is the base model: the share of the tuning gain "
        "each artifact keeps is measured from it to the first merged (tuned) artifact.",
    )
    p.add_argument("paths", nargs="+", help="artifact directories or model names, the base model first")
    p.add_argument(
        "--out", type=Path, default=Path("compress-report"), help="where report.md, report.json and report.png go"
    )
    p.add_argument(
        "--task",
        default="builtin:clinical_legal",
        help="the data set whose test split is scored (default: %(default)s)",
    )
    p.add_argument("--no-task", action="store_true", help="skip the task scores")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="eval settings, e.g. heldout=my.txt max_tokens=4096"
    )
    p.set_defaults(func=_report)


def _run(args: argparse.Namespace) -> int:
    from compress.config import CompressRecipe
    from compress.recipe import run_recipe
    from enclave.config import load_config

    run_recipe(load_config(CompressRecipe, args.recipe, args.overrides), measure=not args.no_report)
    return 0


def _step(args: argparse.Namespace) -> int:
    from enclave.config import flag_values, load_config

    settings = load_config(args.settings, None, args.overrides, flags=flag_values(args))
    out = args.out.expanduser()
    registry.get(args.step).run(args.model, settings, out, out.name, args.overwrite)
    print(f"wrote {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from compress.config import EvalSettings
    from compress.report import report
    from enclave.config import load_config

    report(args.paths, load_config(EvalSettings, None, args.overrides), args.out, None if args.no_task else args.task)
    return 0
