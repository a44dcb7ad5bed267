"""Compression quality bars, measured side by side in one run (results go to BENCHMARKS.md).

Pruning: 50% unstructured and 2:4 with magnitude, Wanda and SparseGPT on the same model,
calibration and held-out text; the bar is Wanda's or SparseGPT's perplexity gap at most one
third of magnitude pruning's.

Run: python -m tests.bench.compress_quality --model MODEL_OR_ARTIFACT [--out DIR]
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
from compress.config import Calibration, EvalSettings, PruneSettings
from compress.io import open_model
from compress.text import perplexity


def held_out_ppl(path: str, ev: EvalSettings) -> float:
    _, model, tokenizer = open_model(path)
    return perplexity(model, tokenizer, ev.heldout, ev.max_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    ev = EvalSettings()
    cal = Calibration(source="builtin:clinical_legal", samples=32, seq_len=256)
    dense = held_out_ppl(args.model, ev)
    rows = [{"method": "dense", "pattern": "-", "perplexity": dense, "seconds": 0.0}]
    with tempfile.TemporaryDirectory() as tmp:
        for pattern in ("unstructured", "2:4"):
            for algorithm in ("magnitude", "wanda", "sparsegpt"):
                settings = PruneSettings(algorithm=algorithm, pattern=pattern, sparsity=0.5, calibration=cal)
                out = Path(tmp) / f"{algorithm}-{pattern.replace(':', 'of')}"
                t0 = time.perf_counter()
                registry.get("prune").run(args.model, settings, out, out.name)
                seconds = time.perf_counter() - t0
                rows.append({"method": algorithm, "pattern": pattern, "perplexity": held_out_ppl(str(out), ev), "seconds": seconds})
    for r in rows:
        r["gap"] = r["perplexity"] - dense
    for pattern in ("unstructured", "2:4"):
        mag = next(r["gap"] for r in rows if r["method"] == "magnitude" and r["pattern"] == pattern)
        for r in rows:
            if r["pattern"] == pattern:
                r["gap_vs_magnitude"] = r["gap"] / mag if mag else float("nan")
    result = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "model": args.model, "heldout": ev.heldout, "calibration": cal.model_dump(), "rows": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compress_quality.json").write_text(json.dumps(result, indent=2))
    print("| method | pattern | perplexity | gap to dense | gap / magnitude's | time s |\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['gap_vs_magnitude']:.2f}" if "gap_vs_magnitude" in r else "-"
        print(f"| {r['method']} | {r['pattern']} | {r['perplexity']:.2f} | {r['gap']:+.2f} | {ratio} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
