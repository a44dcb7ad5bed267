"""Write the benchmark results into BENCHMARKS.md and BENCHMARKS.json (the last step of `make bench`).

BENCHMARKS.md keeps its prose; what sits between ``<!-- generated:NAME -->`` and
``<!-- /generated:NAME -->`` is rewritten from bench-results/NAME.json when that file exists
(sections without a result keep their last figures, with their date). BENCHMARKS.json beside
it gathers every raw result with the machine, versions and commands.

Run: python -m tests.bench.report [--results bench-results] [--md BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

COMMANDS = [
    "python -m tests.bench.compress_quality --suite bars --out bench-results",
    "python -m tests.bench.tune_speed --out bench-results",
    "python -m tests.bench.serving --llama-python .venv-bench/bin/python --llama-lib $LLAMA --llama-server $LLAMA/llama-server --out bench-results",
    "python -m tests.bench.report",
]
PACKAGES = ["torch", "transformers", "peft", "onnxruntime", "onnxruntime-genai", "gptqmodel", "grpcio"]


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split())
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 1024**2, 1), "isa": isa, "python": platform.python_version()}


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def table(header: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def f(x, fmt: str = ".1f", none: str = "-") -> str:
    return none if x is None or (isinstance(x, float) and x != x) else format(x, fmt)


def met(b: dict, op: str) -> str:
    return f"{b['value']:.2f}x (bar {op} {b['threshold']:g}): **{'met' if b['met'] else 'missed'}**"


# --- sections -----------------------------------------------------------------------------


def header(results: dict, info: dict) -> str:
    m, v = info["machine"], info["versions"]
    dates = sorted({r["date"] for r in results.values()})
    pkgs = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    llama = results.get("serving", {}).get("engines", {}).get("llama.cpp", {}).get("version")
    return (f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {m['memory_gib']} GiB RAM, no GPU; Python {m['python']}; "
            f"{pkgs}" + (f"; llama-cpp-python {llama} (llama.cpp built from its sdist, -DGGML_NATIVE=ON)" if llama else "") + ".\n"
            f"Results from {', '.join(dates)}; raw figures in `BENCHMARKS.json`. `make bench` runs, in order:\n\n"
            + "\n".join(f"    {c}" for c in COMMANDS))  # fmt: skip


def serving(r: dict) -> str:
    e = r["engines"]
    order = [n for n in ("enclave-onnx-int8", "enclave-onnx-int4", "llama.cpp", "onnxruntime-genai", "transformers") if n in e]
    llama = e["llama.cpp"]["decode_tokens_per_second"]
    rows = []
    for n in order:
        x = e[n]
        rows.append([n, x.get("weights", "-"), f(x.get("perplexity"), ".2f"), f(x["decode_tokens_per_second"]), f"{x['decode_tokens_per_second'] / llama:.2f}x",
                     f"{f(x['itl_p50_ms'])} / {f(x['itl_p99_ms'])}", f"{f(x['ttft_128_s'], '.3f')} / {f(x['ttft_512_s'], '.3f')}",
                     f(x.get("bytes_per_token", 0) / 1e6, ".0f"), f"{x['bandwidth_share'] * 100:.0f}%" if "bandwidth_share" in x else "-",
                     f(x.get("peak_rss_mb"), ".0f")])  # fmt: skip
    single = table(["engine", "weights", "perplexity", "decode tok/s", "vs llama.cpp", "ITL p50 / p99 ms", "TTFT 128 / 512 tokens, s",
                    "weight MB read per token", "share of bandwidth limit", "peak RSS MB"], rows, "llrrrrrrrr")  # fmt: skip
    rows = []
    for n in ("enclave-onnx-int8", "enclave-onnx-int4", "llama.cpp-server"):
        if n not in e:
            continue
        base = e[n]["load"][0]["tokens_per_second"]
        for row in e[n]["load"]:
            rows.append([n, row["streams"], row["requests"], f(row["tokens_per_second"]), f"{row['tokens_per_second'] / base:.2f}x",
                         f"{row['e2e_p50_s']:.2f} / {row['e2e_p99_s']:.2f}", f(row["ttft_p50_s"], ".3f")])  # fmt: skip
    load = table(["server", "streams", "requests", "tokens/s (all streams)", "vs 1 stream", "end-to-end p50 / p99 s", "TTFT p50 s"], rows, "lrrrrrr")
    mem = table(["server", "RSS after loading, MB", "peak RSS, MB"],
                [[n, f(e[n].get("rss_loaded_mb"), ".0f"), f(e[n].get("peak_rss_mb"), ".0f")] for n in ("enclave-onnx-int8", "enclave-onnx-int4", "llama.cpp-server") if n in e])  # fmt: skip
    bars = "\n".join(f"- {b['what']}: {met(b, '>=' if k != 'ttft512_vs_llama_cpp' else '<=')}" for k, b in r["bars"].items())
    return (f"Run {r['date']}, {r['threads']} threads per engine, greedy, {r['decode_tokens']} new tokens per decode request "
            f"(end-of-sequence banned), bandwidth limit taken as {r['bandwidth_gbps']:g} GB/s.\n\n"
            f"**Bars**\n\n{bars}\n\n**Single stream** (decode: best of 5 requests; TTFT: best of 3 prompts, each a different window; medians in the JSON)\n\n"
            f"{single}\n\n**Concurrent streams** (each stream sends its requests back to back; Enclave with `scheduler.max_batch_size=16`, "
            f"llama.cpp's server with {e.get('llama.cpp-server', {}).get('slots', 8)} slots)\n\n{load}\n\n**Server memory** (one process per artifact)\n\n{mem}")  # fmt: skip


def tune(r: dict) -> str:
    s = r["sides"]
    rows = [[name, f(x["tokens_per_second"]), f(x["seconds"], ".0f"), f(x["mean_loss"], ".3f"), f(x["peak_rss_mb"] / 1024, ".2f")]
            for name, x in (("Enclave (`enclave tune`'s loop)", s["enclave"]), ("PEFT + transformers Trainer", s["trainer"]))]  # fmt: skip
    return (f"Run {r['date']}: {r['steps']} optimizer steps each, recipe `tune/recipes/{r['recipe']}`.\n\n"
            + table(["loop", "training tokens/s", "seconds in steps", "mean loss over the run", "peak RSS GB"], rows)
            + f"\n\nBar (Enclave's tokens/s at least 1.0x the Trainer loop's): {met(r['bar'], '>=')}")  # fmt: skip


def prune(r: dict) -> str:
    rows = [[x["method"], x["pattern"], f(x["perplexity"], ".2f"), f"{x['gap']:+.2f}", f(x.get("gap_vs_magnitude"), ".2f"), f(x["seconds"], ".0f")] for x in r["rows"]]
    return f"Run {r['date']}.\n\n" + table(["method", "pattern", "perplexity", "gap to dense", "gap / magnitude's", "time s"], rows, "llrrrr")


def quantize(r: dict) -> str:
    rows = [[x["method"], 4, x["group_size"], f(x["perplexity"], ".2f"), f"{x['gap']:+.2f}", f(x["gap_vs_rtn"], ".2f"), f(x["seconds"], ".0f")] for x in r["rows"]]
    return (f"Run {r['date']}; dense perplexity {r['dense_perplexity']:.2f}.\n\n"
            + table(["method", "bits", "group", "perplexity", "gap to dense", "gap / RTN's", "time s"], rows, "lrrrrrr"))  # fmt: skip


def export(r: dict) -> str:
    base = next((x["decode_tokens_per_second"] for x in r["rows"] if x["engine"] == "torch"), None)
    rows = [[x["name"], x["engine"], f(x["size_bytes"] / 1e6), f(x["perplexity"], ".2f"), x.get("greedy_identical") or "-",
             f(x["decode_tokens_per_second"]), f"{x['decode_tokens_per_second'] / base:.1f}x" if base else "-", f(x["ttft_seconds"], ".3f")]
            for x in r["rows"]]  # fmt: skip
    return f"Run {r['date']}.\n\n" + table(["artifact", "engine", "MB", "perplexity", "greedy = PyTorch", "decode tok/s", "vs PyTorch", "TTFT s"], rows, "llrrrrrr")


SECTIONS = {"header": header, "serving": serving, "tune_speed": tune, "prune_quality": prune, "quantize_quality": quantize, "export_quality": export}


def render(md: str, results: dict, info: dict) -> str:
    for name, fn in SECTIONS.items():
        if name != "header" and name not in results:
            continue
        body = fn(results, info) if name == "header" else fn(results[name])
        pattern = re.compile(rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(md):
            raise SystemExit(f"BENCHMARKS.md has no <!-- generated:{name} --> section; add the two marker lines where it belongs")
        md = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), md)
    return md


def write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("bench-results"))
    parser.add_argument("--md", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args()
    results = {p.stem: json.loads(p.read_text()) for p in sorted(args.results.glob("*.json"))}
    if not results:
        raise SystemExit(f"no results in {args.results}; run `make bench` (or the commands in {args.md}) first")
    info = {"machine": machine(), "versions": versions(), "commands": COMMANDS, "written": date.today().isoformat()}
    write(args.md, render(args.md.read_text(), results, info))
    write(args.md.with_suffix(".json"), json.dumps({**info, "results": results}, indent=2) + "\n")
    print(f"wrote {args.md} and {args.md.with_suffix('.json')} from {', '.join(results)}")


if __name__ == "__main__":
    main()
