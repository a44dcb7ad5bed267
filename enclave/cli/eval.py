"""`enclave eval`: score a base model, an adapter or any later artifact on the same test split."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "evaluate a model or adapter: perplexity, exact match, token F1, BLEU, ROUGE-L, fairness by group"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        help="a store name or checkpoint path (GPTQ included), an ONNX artifact (run with ONNX Runtime), "
        "or an adapter artifact (its base comes from its manifest)",
    )
    parser.add_argument(
        "--adapter",
        help="an adapter artifact to apply on MODEL (on an ONNX artifact of its base, int4 included: unmerged, "
        "as the server's onnxruntime engine runs it)",
    )
    parser.add_argument(
        "--data",
        default="builtin:clinical_legal",
        help="data whose test split is scored (default builtin:clinical_legal)",
    )
    parser.add_argument("--config", type=Path, help="a tune recipe whose data.* and eval.* settings apply")
    parser.add_argument("--text", type=Path, help="also report perplexity on this held-out text file")
    parser.add_argument("--report", type=Path, help="write the Markdown report here")
    parser.add_argument(
        "--json", type=Path, help="write the scores as JSON here (for scripts and `enclave compress report`)"
    )
    parser.add_argument("--no-record", action="store_true", help="do not add the scores to the artifact's manifest")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. eval.max_examples=50")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from enclave.atomic import atomic_write_bytes
    from enclave.config import load_config
    from enclave.manifest import update_metrics
    from tune.config import TuneConfig
    from tune.data.prepare import prepare
    from tune.eval.artifact import load_for_eval
    from tune.eval.report import markdown, print_side_by_side
    from tune.eval.run import score, text_perplexity

    cfg = load_config(TuneConfig, args.config, [f"data.path={args.data}", *args.overrides])
    model, tokenizer, label, artifact = load_for_eval(args.model, args.adapter)
    context = getattr(model, "context_length", None) or getattr(model.config, "max_position_embeddings", None)
    data = prepare(cfg.data, tokenizer, context)
    result = score(cfg, model, tokenizer, data.records["test"], data.examples["test"], label, f"eval {label}")
    if args.text:
        result.metrics["text_perplexity"] = text_perplexity(model, tokenizer, args.text.read_text(encoding="utf-8"))
    print_side_by_side([result])
    if args.report:
        atomic_write_bytes(args.report, markdown([result], f"{label}: test split of {args.data}").encode())
    if args.json:
        atomic_write_bytes(args.json, json.dumps({"data": args.data, **result.to_dict()}, indent=2).encode())
    if artifact is not None and not args.no_record:
        update_metrics(artifact, {f"eval:{data.digest[:19]}": {"data": args.data, **result.to_dict()}})
    return 0
