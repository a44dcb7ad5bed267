"""Compression quality bars, measured side by side in one run (results go to BENCHMARKS.md).

prune: 50% unstructured and 2:4 with magnitude, Wanda and SparseGPT on the same model,
calibration and held-out text; the bar is Wanda's or SparseGPT's perplexity gap at most one
third of magnitude pruning's.
quantize: 4-bit GPTQ against round-to-nearest at the same bits and group size (64 and 32); the
bar is GPTQ's gap at most half of round-to-nearest's.
export: the dense model, its fp32 and int4 ONNX exports, and the GPTQ model and its ONNX export,
through `enclave compress report` (perplexity, size, decode speed, time to first token).
bars (what `make bench` runs, about 13 minutes): each bar once: unstructured pruning, group 64,
and the export suite on the GPTQ model the quantize suite just made (whose perplexity the
quantize table already has). all: every variant.

Run: python -m tests.bench.compress_quality [--suite bars|prune|quantize|export|all] [--model M] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from compress import registry
from compress.config import EvalSettings
from compress.export.config import ExportSettings
from compress.io import open_model
from compress.prune.config import PruneSettings
from compress.quantize.config import QuantizeSettings
from compress.report import report
from compress.settings import Calibration
from compress.text import perplexity
from enclave.manifest import read_manifest


def held_out_ppl(path: str, ev: EvalSettings) -> float:
    _, model, tokenizer = open_model(path)
    return perplexity(model, tokenizer, ev.heldout, ev.max_tokens)


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads"


def save(out: Path, name: str, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{name}.json.tmp"
    tmp.write_text(json.dumps({"date": date.today().isoformat(), "machine": machine(), **result}, indent=2))
    tmp.replace(out / f"{name}.json")


def timed_step(step: str, model: str, settings, path: Path, ev: EvalSettings) -> dict:
    """Run one compress step into ``path``; its held-out perplexity and the seconds it took."""
    t0 = time.perf_counter()
    registry.get(step).run(model, settings, path, path.name)
    seconds = time.perf_counter() - t0
    return {"perplexity": held_out_ppl(str(path), ev), "seconds": seconds}


def quantize_suite(model: str, ev: EvalSettings, out: Path, groups=(64, 32), keep: Path | None = None) -> None:
    """GPTQ vs round-to-nearest, 4 bits, groups of 64 and 32, the default calibration; ``keep``
    receives the GPTQ group-64 model (the step's defaults) for the export suite."""
    dense = held_out_ppl(model, ev)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for group in groups:
            for method in ("rtn", "gptq"):
                settings = QuantizeSettings(method=method, bits=4, group_size=group)
                path = (
                    keep
                    if keep and method == "gptq" and settings == QuantizeSettings()
                    else Path(tmp) / f"{method}-g{group}"
                )
                rows.append(
                    {"method": method, "group_size": group, **timed_step("quantize", model, settings, path, ev)}
                )
    for r in rows:
        r["gap"] = r["perplexity"] - dense
        rtn = next(x["gap"] for x in rows if x["method"] == "rtn" and x["group_size"] == r["group_size"])
        r["gap_vs_rtn"] = r["gap"] / rtn if rtn else float("nan")
    save(
        out,
        "quantize_quality",
        {
            "model": model,
            "heldout": ev.heldout,
            "dense_perplexity": dense,
            "calibration": QuantizeSettings().calibration.model_dump(),
            "rows": rows,
        },
    )
    print(
        f"dense perplexity {dense:.2f}\n"
        "| method | bits | group | perplexity | gap to dense | gap / RTN's | time s |\n"
        "|---|---|---|---:|---:|---:|---:|"
    )
    for r in rows:
        print(
            f"| {r['method']} | 4 | {r['group_size']} | {r['perplexity']:.2f} | {r['gap']:+.2f} "
            f"| {r['gap_vs_rtn']:.2f} | {r['seconds']:.0f} |"
        )


def export_suite(model: str, ev: EvalSettings, out: Path, gptq: Path | None = None, gptq_row: bool = True) -> None:
    """PyTorch against ONNX Runtime on the same model, plain and GPTQ-quantized (``gptq``: a GPTQ
    model with the quantize step's defaults, made here when not given; ``gptq_row``: measure the
    GPTQ checkpoint itself too, slow on CPU and already in the quantize suite's table)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = [model]
        for precision in ("fp32", "int8", "int4"):
            paths.append(
                str(
                    registry.get("export").run(
                        model, ExportSettings(precision=precision), root / f"onnx-{precision}", f"onnx-{precision}"
                    )
                )
            )
        if gptq is None or not gptq.is_dir():
            gptq = registry.get("quantize").run(model, QuantizeSettings(), root / "gptq-g64", "gptq-g64")
        paths += [str(gptq)] if gptq_row else []
        paths.append(
            str(
                registry.get("export").run(str(gptq), ExportSettings(precision="int4"), root / "onnx-gptq", "onnx-gptq")
            )
        )
        rows = report(paths, ev, out / "export-report", task_data=None)
        for row in rows:  # how often each export's greedy tokens equal PyTorch's, from its manifest
            metrics = read_manifest(Path(row["artifact"])).metrics if row["kind"].startswith("onnx") else {}
            row["greedy_identical"] = (
                f"{metrics['greedy_identical_prompts']}/{metrics['greedy_prompts']}" if metrics else None
            )
    save(out, "export_quality", {"model": model, "heldout": ev.heldout, "rows": rows})
    print(
        "| artifact | engine | MB | perplexity | greedy = PyTorch | decode tok/s | TTFT s |\n"
        "|---|---|---:|---:|---:|---:|---:|"
    )
    for r in rows:
        print(
            f"| {r['name']} | {r['engine']} | {r['size_bytes'] / 1e6:.1f} | {r['perplexity']:.2f} "
            f"| {r['greedy_identical'] or '-'} | "
            f"{r['decode_tokens_per_second']:.1f} | {r['ttft_seconds']:.3f} |"
        )


def prune_suite(model: str, ev: EvalSettings, out: Path, patterns=("unstructured", "2:4")) -> None:
    cal = Calibration(
        source=["builtin:clinical_legal", "builtin:psf_license"], samples=32, seq_len=256
    )  # train split + text
    dense = held_out_ppl(model, ev)
    rows = [{"method": "dense", "pattern": "-", "perplexity": dense, "seconds": 0.0}]
    with tempfile.TemporaryDirectory() as tmp:
        for pattern in patterns:
            for algorithm in ("magnitude", "wanda", "sparsegpt"):
                settings = PruneSettings(algorithm=algorithm, pattern=pattern, sparsity=0.5, calibration=cal)
                path = Path(tmp) / f"{algorithm}-{pattern.replace(':', 'of')}"
                rows.append({"method": algorithm, "pattern": pattern, **timed_step("prune", model, settings, path, ev)})
    for r in rows:
        r["gap"] = r["perplexity"] - dense
    for pattern in patterns:
        mag = next(r["gap"] for r in rows if r["method"] == "magnitude" and r["pattern"] == pattern)
        for r in rows:
            if r["pattern"] == pattern:
                r["gap_vs_magnitude"] = r["gap"] / mag if mag else float("nan")
    save(out, "prune_quality", {"model": model, "heldout": ev.heldout, "calibration": cal.model_dump(), "rows": rows})
    print(
        "| method | pattern | perplexity | gap to dense | gap / magnitude's | time s |\n|---|---|---:|---:|---:|---:|"
    )
    for r in rows:
        ratio = f"{r['gap_vs_magnitude']:.2f}" if "gap_vs_magnitude" in r else "-"
        print(
            f"| {r['method']} | {r['pattern']} | {r['perplexity']:.2f} | {r['gap']:+.2f} "
            f"| {ratio} | {r['seconds']:.0f} |"
        )


def bars_suite(model: str, ev: EvalSettings, out: Path) -> None:
    """Each compression bar once, in about 15 minutes: `make bench`."""
    prune_suite(model, ev, out, patterns=("unstructured",))
    with tempfile.TemporaryDirectory() as tmp:
        gptq = Path(tmp) / "gptq-g64"
        quantize_suite(model, ev, out, groups=(64,), keep=gptq)
        export_suite(model, ev, out, gptq=gptq, gptq_row=False)


SUITES = {"prune": prune_suite, "quantize": quantize_suite, "export": export_suite}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=[*SUITES, "bars", "all"], default="bars")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    if args.suite == "bars":
        bars_suite(args.model, EvalSettings(), args.out)
        return
    for name in SUITES if args.suite == "all" else [args.suite]:
        print(f"\n## {name} ({args.model}, {machine()}, {date.today().isoformat()})")
        SUITES[name](args.model, EvalSettings(), args.out)


if __name__ == "__main__":
    main()
