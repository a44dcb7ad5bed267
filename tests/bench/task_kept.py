"""How much of the tuning gain each way of compressing the demo adapter keeps (BENCHMARKS.md,
"Compression keeps the task").

The adapter `make demo` tunes (clinical-legal, or --adapter) is compressed several ways, each
artifact exported to ONNX and scored by the shared evaluation on the data set's test split (exact
match and F1) and on the held-out text (perplexity). The share of the gain kept is
(artifact EM - base EM) / (tuned EM - base EM), with the base's and the tuned model's EM from the
adapter's manifest (tune scored both on the same split with the same code).

Ways: the merged model in fp32 and int8 (MatMulNBits, block 32); int4 with the model builder's
k-quants (output layer int8: `enclave compress` export's default), the same with llama.cpp's
mixed strategy (`mixed_layers:int8`: the first and last eighth of the layers and every third
layer's qkv/v/down projections at 8 bits); GPTQ 4-bit group 64 on the train split (the demo
recipe's quantize step) exported int4; and the base at int4 with the adapter kept unmerged in the
graph (the builder's adapter_path: LoRA A and B beside the quantized base weights).

Run: python -m tests.bench.task_kept [--adapter clinical-legal] [--out bench-results]   (about 25 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compress import registry
from compress.export.config import ExportSettings
from compress.merge.config import MergeSettings
from compress.quantize.config import QuantizeSettings
from compress.report import task_score
from enclave.evaluation.compare import gain_kept
from enclave.evaluation.lm import OnnxLM
from enclave.evaluation.perplexity import text_perplexity
from enclave.manifest import read_manifest
from enclave.store import resolve_model
from enclave.texts import HELDOUT, text_file
from tests.bench.compress_quality import save

BUILDER_INT4 = ["accuracy_level=4", "block_size=32", "matmul_mixed_precision=last_matmul:int8"]


def builder(source: Path, out: Path, precision: str, extra: list[str]) -> Path:
    """The ONNX Runtime GenAI model builder with these options (what `enclave compress` export runs)."""
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(source),
        "-o",
        str(out),
        "-p",
        precision,
        "-e",
        "cpu",
        "-c",
        str(out.parent / "cache"),
        "--extra_options",
        "hf_token=false",
        "hf_remote=false",
        *extra,
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--adapter",
        default="clinical-legal",
        help="an adapter in the store, tuned by tune (its manifest has the base and tuned scores)",
    )
    parser.add_argument(
        "--data", default="builtin:clinical_legal", help="the data set it was tuned on (its test split is scored)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    from transformers import AutoTokenizer

    adapter_dir = Path(args.adapter).expanduser()
    if not adapter_dir.is_dir():
        from enclave.store import home

        adapter_dir = home() / "adapters" / args.adapter
    metrics = read_manifest(adapter_dir).metrics
    base_em, tuned_em = (
        metrics["eval_base"]["metrics"]["exact_match"],
        metrics["eval_adapter"]["metrics"]["exact_match"],
    )
    base = resolve_model(read_manifest(adapter_dir).settings["base_model"]["ref"]).path
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        merged = registry.get("merge").run(
            str(base), MergeSettings(adapter=str(adapter_dir)), work / "merged", "merged"
        )
        tok = AutoTokenizer.from_pretrained(merged)
        heldout = tok(text_file(HELDOUT).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]

        def gptq_int4(out: Path) -> Path:
            quantized = registry.get("quantize").run(str(merged), QuantizeSettings(), work / "gptq", "gptq")
            return registry.get("export").run(
                str(quantized), ExportSettings(precision="int4", check_tokens=4), out, "gptq-onnx"
            )

        ways = [
            ("merged fp32", lambda out: builder(merged, out, "fp32", [])),
            ("merged int8", lambda out: builder(merged, out, "int8", ["accuracy_level=4", "block_size=32"])),
            ("merged int4 k-quants", lambda out: builder(merged, out, "int4", [*BUILDER_INT4, "algo_config=k_quant"])),
            (
                "merged int4 k-quants, mixed int8",
                lambda out: builder(
                    merged,
                    out,
                    "int4",
                    [
                        *BUILDER_INT4[:2],
                        "algo_config=k_quant",
                        "matmul_mixed_precision=last_matmul:int8,mixed_layers:int8",
                    ],
                ),
            ),
            ("merged GPTQ 4-bit g64 -> int4", gptq_int4),
            (
                "base int4 + unmerged adapter",
                lambda out: builder(
                    base, out, "int4", [*BUILDER_INT4, "algo_config=rtn", f"adapter_path={adapter_dir}"]
                ),
            ),
        ]
        for i, (label, make) in enumerate(ways):
            print(f"task kept: {label}", flush=True)
            t0 = time.perf_counter()
            path = make(work / f"way{i}")
            lm = OnnxLM(path)
            score = task_score(lm, tok, args.data, label)
            row = {
                "way": label,
                "exact_match": score["task_exact_match"],
                "token_f1": score["task_token_f1"],
                "perplexity": text_perplexity(lm, heldout, 512, 2048),
                "size_bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
                "gain_kept": gain_kept(base_em, tuned_em, score["task_exact_match"]),
                "seconds": time.perf_counter() - t0,
            }
            print(
                f"  EM {row['exact_match']:.1f}, kept {row['gain_kept']:.0%}, "
                f"perplexity {row['perplexity']:.2f}, {row['size_bytes'] / 1e6:.0f} MB",
                flush=True,
            )
            rows.append(row)
    save(
        args.out,
        "task_kept",
        {"adapter": str(adapter_dir), "base_exact_match": base_em, "tuned_exact_match": tuned_em, "rows": rows},
    )
    print("| way | MB | perplexity | EM | F1 | EM gain kept |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['way']} | {r['size_bytes'] / 1e6:.0f} | {r['perplexity']:.2f} | {r['exact_match']:.1f} "
            f"| {r['token_f1']:.1f} | {r['gain_kept']:.0%} |"
        )


if __name__ == "__main__":
    main()
