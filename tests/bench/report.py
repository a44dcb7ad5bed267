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

from tests.bench import quality_speed as qs

COMMANDS = [
    "python -m tests.bench.compress_quality --suite bars --out bench-results",
    "python -m tests.bench.tune_speed --out bench-results",
    "python -m tests.bench.serving --llama $LLAMA --llama-python .venv-bench/bin/python --out bench-results",
    "python -m tests.bench.engine --out bench-results",
    "python -m tests.bench.http_api --out bench-results",
    "python -m tests.bench.structured --out bench-results",
    "python -m tests.bench.report",
]
PLOT = Path("bench-plots") / "quality_speed.png"  # beside BENCHMARKS.md
PACKAGES = ["torch", "transformers", "peft", "onnxruntime", "onnxruntime-genai", "gptqmodel", "grpcio"]


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    flags = set(
        next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    )
    isa = [
        f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8") if f in flags
    ]  # as listed; build-llama.sh probes them
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 1024**2, 1),
        "isa": isa,
        "python": platform.python_version(),
    }


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
    if b["value"] is None:
        return (
            "no llama.cpp quantization reaches Enclave int8's perplexity "
            f"(bar {op} {b['threshold']:g}): **nothing to compare**"
        )
    against = f" against {b['against']}" if b.get("against") else ""
    return f"{b['value']:.2f}x{against} (bar {op} {b['threshold']:g}): **{'met' if b['met'] else 'missed'}**"


def llama_build(r: dict) -> str:
    """How llama.cpp was built, from the serving result (tests/bench/build-llama.sh's record)."""
    b = r.get("llama_cpp_build")
    if not b:
        return ""
    how = (
        "GGML_NATIVE"
        if b.get("native")
        else f"GGML_NATIVE off, for the CPU features this machine grants: {', '.join(b['features']) or 'none'}"
    )
    return f"llama.cpp from the llama-cpp-python {b['llama_cpp_python']} sdist ({how})"


# --- sections -----------------------------------------------------------------------------


def header(results: dict, info: dict) -> str:
    m, v = info["machine"], info["versions"]
    dates = sorted({r["date"] for r in results.values()})
    pkgs = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    software = "; ".join(x for x in (f"Python {m['python']}", pkgs, llama_build(results.get("serving", {}))) if x)
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), "
        f"{m['memory_gib']} GiB RAM, no GPU; {software}.\n"
        f"Results from {', '.join(dates)}; raw figures in `BENCHMARKS.json`. `make bench` runs, in order:\n\n"
        + "\n".join(f"    {c}" for c in COMMANDS)
    )


ORDER = (
    "enclave-onnx-int8",
    "enclave-onnx-int4",
    "llama.cpp-Q4_0",
    "llama.cpp-Q4_1",
    "llama.cpp-Q4_K_M",
    "llama.cpp-Q8_0",
    "onnxruntime-genai",
    "transformers",
)


def ordered(e: dict, servers_only: bool = False) -> list[str]:
    names = [n for n in ORDER if n in e] + sorted(n for n in e if n not in ORDER and "decode_tokens_per_second" in e[n])
    return [n for n in names if "decode_tokens_per_second" in e[n] and (not servers_only or e[n].get("load"))]


def serving(r: dict) -> str:
    e = r["engines"]
    rows = []
    for n in ordered(e):
        x = e[n]
        rows.append(
            [
                n,
                x.get("weights", "-"),
                f(x.get("perplexity"), ".2f"),
                f(x["decode_tokens_per_second"]),
                f"{f(x['itl_p50_ms'])} / {f(x['itl_p99_ms'])}",
                f"{f(x['ttft_128_s'], '.3f')} / {f(x['ttft_512_s'], '.3f')}",
                f(x.get("bytes_per_token", 0) / 1e6, ".0f"),
                f"{x['bandwidth_share'] * 100:.0f}%" if "bandwidth_share" in x else "-",
                f(x.get("peak_rss_mb"), ".0f"),
            ]
        )
    single = table(
        [
            "engine",
            "weights",
            "perplexity",
            "decode tok/s",
            "ITL p50 / p99 ms",
            "TTFT 128 / 512 tokens, s",
            "weight MB read per token",
            "share of bandwidth limit",
            "peak RSS MB",
        ],
        rows,
        "llrrrrrrr",
    )
    rows = []
    for n in ordered(e, servers_only=True):
        base = e[n]["load"][0]["tokens_per_second"]
        for row in e[n]["load"]:
            rows.append(
                [
                    n,
                    row["streams"],
                    row["requests"],
                    f(row["tokens_per_second"]),
                    f"{row['tokens_per_second'] / base:.2f}x",
                    f"{row['e2e_p50_s']:.2f} / {row['e2e_p99_s']:.2f}",
                    f(row["ttft_p50_s"], ".3f"),
                ]
            )
    load = table(
        [
            "server",
            "streams",
            "requests",
            "tokens/s (all streams)",
            "vs 1 stream",
            "end-to-end p50 / p99 s",
            "TTFT p50 s",
        ],
        rows,
        "lrrrrrr",
    )
    mem = table(
        ["server", "RSS after loading, MB", "peak RSS, MB"],
        [
            [n, f(e[n].get("rss_loaded_mb"), ".0f"), f(e[n].get("peak_rss_mb"), ".0f")]
            for n in ordered(e, servers_only=True)
        ],
    )
    bench = [
        [
            n.removeprefix("llama.cpp-"),
            f(e[n]["bytes_per_token"] / 2**20, ".0f"),
            f"{f(b.get('pp512'))} \u00b1 {f(b.get('pp512_stddev'))}",
            f"{f(b.get('tg128'))} \u00b1 {f(b.get('tg128_stddev'))}",
            f(e[n]["decode_tokens_per_second"]),
        ]
        for n in ordered(e)
        if (b := e[n].get("llama_bench"))
    ]
    bars = "\n".join(
        f"- {b['what']}: {met(b, '>=' if k != 'ttft512_vs_llama_cpp' else '<=')}" for k, b in r["bars"].items()
    )
    slots = next((e[n]["slots"] for n in ordered(e, servers_only=True) if "slots" in e[n]), 8)
    text = (
        f"Run {r['date']}, {r['threads']} threads per engine, greedy, "
        f"{r['decode_tokens']} new tokens per decode request "
        f"(end-of-sequence banned), bandwidth limit taken as {r['bandwidth_gbps']:g} GB/s"
        + (f"; {llama_build(r)}" if r.get("llama_cpp_build") else "")
        + ".\n\n"
        f"**Bars**\n\n{bars}\n\n**Single stream** "
        "(decode: best of 5 requests; TTFT: best of 3 prompts, each a different window; medians in the JSON; "
        f"llama.cpp through `llama-server -fa on -np {slots}`)\n\n{single}\n\n"
    )
    if bench:
        text += (
            "**llama-bench** (`-fa 1 -t "
            + str(r["threads"])
            + " -p 512 -n 128`, 5 repetitions, mean \u00b1 standard deviation; "
            "beside it the same file's single-stream decode through llama-server)\n\n"
            + table(
                ["quantization", "MiB", "prompt tok/s (pp512)", "decode tok/s (tg128)", "llama-server decode tok/s"],
                bench,
            )
            + "\n\n"
        )
    return text + (
        "**Concurrent streams** (each stream sends its requests back to back; "
        "Enclave with `scheduler.max_batch_size=16`, "
        f"llama-server with {slots} slots and continuous batching)\n\n{load}\n\n"
        f"**Server memory** (one process per artifact)\n\n{mem}"
    )


def quality_speed_section(r: dict) -> str:
    """The quality/speed table, the plot, and the "faster at equal or better quality" reading."""
    pts = qs.points(r["engines"], r["reference_perplexity"])
    rows = [
        [p.family, p.precision, f(p.perplexity, ".2f"), f"{p.relative * 100:+.1f}%", f(p.single), f(p.streams8)]
        for p in pts
    ]
    tol = r.get("equal_quality", qs.EQUAL_QUALITY)
    lines = []
    for c in qs.comparisons(pts, tol):
        e = c["point"]
        head = f"- **{e.label}** (perplexity {e.perplexity:.2f}, {e.relative * 100:+.1f}% vs fp32): "
        if not c["peers"]:
            lines.append(head + "no llama.cpp quantization has equal or better perplexity.")
            continue
        each = "; ".join(
            f"{x['peer'].precision} ({x['peer'].perplexity:.2f}): "
            f"{ratio(x['single'])} single-stream, {ratio(x['streams8'])} at 8 streams"
            for x in c["peers"]
        )
        verdict = {
            (True, True): "faster than each, in both",
            (True, False): "faster than each in single-stream decode only",
            (False, True): "faster than each at 8 streams only",
            (False, False): "not faster than each in either",
        }[(c["faster_single"], c["faster_streams8"])]
        lines.append(head + f"llama.cpp at equal or better quality: {each}. **{verdict}**.")
    check = r["engines"].get("llama.cpp-F32", {}).get("perplexity")
    check_line = (
        (
            "\n\nThe evaluation is the same for every engine: "
            "llama.cpp's F32 GGUF (the same weights as transformers' fp32) "
            f"scores {check:.3f} against transformers' {r['reference_perplexity']:.3f}."
        )
        if check
        else ""
    )
    return (
        f"Run {r['date']}. Perplexity relative to transformers fp32 ({r['reference_perplexity']:.2f}), "
        "the same token ids and windows for "
        f"every engine; tokens/s as in the serving tables (8 streams: servers only).\n\n"
        + table(
            ["engine", "precision", "perplexity", "vs fp32", "1-stream decode tok/s", "8 streams tok/s"], rows, "llrrrr"
        )
        + f"\n\n![perplexity against tokens/s]({PLOT.as_posix()})\n\n"
        f"Faster at equal or better quality (Enclave / llama.cpp; equal means within {tol * 100:g}% perplexity):\n\n"
        + "\n".join(lines)
        + check_line
    )


def ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def tune(r: dict) -> str:
    s = r["sides"]
    rows = [
        [
            name,
            f(x["tokens_per_second"]),
            f(x["seconds"], ".0f"),
            f(x["mean_loss"], ".3f"),
            f(x["peak_rss_mb"] / 1024, ".2f"),
        ]
        for name, x in (
            ("Enclave (`enclave tune`'s loop)", s["enclave"]),
            ("PEFT + transformers Trainer", s["trainer"]),
        )
    ]
    return (
        f"Run {r['date']}: {r['steps']} optimizer steps each, recipe `tune/recipes/{r['recipe']}`.\n\n"
        + table(["loop", "training tokens/s", "seconds in steps", "mean loss over the run", "peak RSS GB"], rows)
        + f"\n\nBar (Enclave's tokens/s at least 1.0x the Trainer loop's): {met(r['bar'], '>=')}"
    )


def prune(r: dict) -> str:
    rows = [
        [
            x["method"],
            x["pattern"],
            f(x["perplexity"], ".2f"),
            f"{x['gap']:+.2f}",
            f(x.get("gap_vs_magnitude"), ".2f"),
            f(x["seconds"], ".0f"),
        ]
        for x in r["rows"]
    ]
    return f"Run {r['date']}.\n\n" + table(
        ["method", "pattern", "perplexity", "gap to dense", "gap / magnitude's", "time s"], rows, "llrrrr"
    )


def quantize(r: dict) -> str:
    rows = [
        [
            x["method"],
            4,
            x["group_size"],
            f(x["perplexity"], ".2f"),
            f"{x['gap']:+.2f}",
            f(x["gap_vs_rtn"], ".2f"),
            f(x["seconds"], ".0f"),
        ]
        for x in r["rows"]
    ]
    return f"Run {r['date']}; dense perplexity {r['dense_perplexity']:.2f}.\n\n" + table(
        ["method", "bits", "group", "perplexity", "gap to dense", "gap / RTN's", "time s"], rows, "lrrrrrr"
    )


def export(r: dict) -> str:
    base = next((x["decode_tokens_per_second"] for x in r["rows"] if x["engine"] == "torch"), None)
    rows = [
        [
            x["name"],
            x["engine"],
            f(x["size_bytes"] / 1e6),
            f(x["perplexity"], ".2f"),
            x.get("greedy_identical") or "-",
            f(x["decode_tokens_per_second"]),
            f"{x['decode_tokens_per_second'] / base:.1f}x" if base else "-",
            f(x["ttft_seconds"], ".3f"),
        ]
        for x in r["rows"]
    ]
    return f"Run {r['date']}.\n\n" + table(
        ["artifact", "engine", "MB", "perplexity", "greedy = PyTorch", "decode tok/s", "vs PyTorch", "TTFT s"],
        rows,
        "llrrrrrr",
    )


def engine(r: dict) -> str:
    """The onnxruntime engine's own bars: adapters, prefix cache, chunked prefill, adapter memory."""
    a, arr, raw = r["adapter"], r["arrival"], r["arrival_unchunked"]
    rows = [
        [
            b["what"],
            f"{b['value']:.2f}",
            f"{'>=' if b['higher'] else '<='} {b['threshold']:g}",
            "met" if b["met"] else "**missed**",
        ]
        for b in r["bars"].values()
    ]
    figures = table(
        ["measure", "figure"],
        [
            [
                "1 stream, base / with an adapter / torch backend with it (tok/s)",
                f"{r['base_1']:.1f} / {r['adapter_1']:.1f} / {r['torch_adapter_1']:.1f}",
            ],
            ["8 streams, base / over 4 adapters (tok/s)", f"{r['base_8']:.1f} / {r['adapters_8']:.1f}"],
            [
                "TTFT, 1,024-token prefix + 32-token question, uncached / cached",
                f"{r['prefix']['uncached_s']:.3f} s / {r['prefix']['cached_s']:.3f} s",
            ],
            ["7 streams' inter-token latency, median without an arrival", f"{arr['median_ms']:.1f} ms"],
            [
                "... while 2,000 prompt tokens arrive, chunked: p99 / max / its TTFT",
                f"{arr['p99_ms']:.0f} ms / {arr['max_ms']:.0f} ms / {arr['ttft_s']:.2f} s",
            ],
            [
                "... the same with chunking off: p99 / max / its TTFT",
                f"{raw['p99_ms']:.0f} ms / {raw['max_ms']:.0f} ms / {raw['ttft_s']:.2f} s",
            ],
            [
                "server RSS, no adapters / 10 loaded (MB); their files (MB)",
                f"{r['rss_mb']['no adapters']:.0f} / {r['rss_mb']['10 adapters']:.0f}; {r['adapter_files_mb']:.0f}",
            ],
        ],
        "lr",
    )
    return (
        f"Run {r['date']}, {r['threads']} threads, SmolLM2-135M-Instruct ONNX int8; the adapter: rank "
        f"{a['rank']} on all {a['targets']} projections, {a['file_mb']:.1f} MB, from `enclave tune`.\n\n"
        + table(["bar", "value", "bar", ""], rows, "lrrl")
        + "\n\n"
        + figures
    )


def http_api(r: dict) -> str:
    """The OpenAI-compatible API against gRPC on one server."""
    rows = [
        [b["what"], f"{b['value']:.2f}", f">= {b['threshold']:g}", "met" if b["met"] else "**missed**"]
        for b in r["bars"].values()
    ]
    runs = r["runs"]
    return (
        f"Run {r['date']}, {r['threads']} threads, SmolLM2-135M-Instruct ONNX int8, {r['streams']} streams, "
        f"{r['requests']} requests of {r['decode_tokens']} tokens each way; "
        f"the best of {len(runs['grpc'])} runs each "
        f"(gRPC {', '.join(f'{x:.1f}' for x in runs['grpc'])}; HTTP {', '.join(f'{x:.1f}' for x in runs['http'])} "
        f"tokens/s).\n\n"
        + table(["bar", "value", "bar", ""], rows, "lrrl")
        + "\n\n"
        + table(
            ["API", "tokens/s, 8 streams"],
            [["gRPC", f"{r['grpc_8']:.1f}"], ["OpenAI HTTP", f"{r['http_8']:.1f}"]],
            "lr",
        )
    )


def structured(r: dict) -> str:
    """Structured output's cost: JSON-schema answers against free ones."""
    rows = [
        [b["what"], f"{b['value']:.2f}", f">= {b['threshold']:g}", "met" if b["met"] else "**missed**"]
        for b in r["bars"].values()
    ]
    figures = [
        ["1 stream, decode tokens/s", f"{r['free_1']:.1f}", f"{r['json_1']:.1f}"],
        [f"{r['streams']} streams, tokens/s", f"{r['free_8']:.1f}", f"{r['json_8']:.1f}"],
    ]
    return (
        f"Run {r['date']}, {r['threads']} threads, SmolLM2-135M-Instruct ONNX int8, {r['tokens']} tokens an answer; "
        "the schema: one string of 600 to 900 characters (so both answers run to the same length).\n\n"
        + table(["bar", "value", "bar", ""], rows, "lrrl")
        + "\n\n"
        + table(["", "free", "JSON schema"], figures, "lrr")
    )


# section name: (the result it is written from, the writer)
SECTIONS = {
    "header": (None, header),
    "serving": ("serving", serving),
    "quality_speed": ("serving", quality_speed_section),
    "engine": ("engine", engine),
    "http_api": ("http_api", http_api),
    "structured": ("structured", structured),
    "tune_speed": ("tune_speed", tune),
    "prune_quality": ("prune_quality", prune),
    "quantize_quality": ("quantize_quality", quantize),
    "export_quality": ("export_quality", export),
}


def render(md: str, results: dict, info: dict) -> str:
    for name, (source, fn) in SECTIONS.items():
        if source is not None and source not in results:
            continue
        body = fn(results, info) if source is None else fn(results[source])
        pattern = re.compile(rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(md):
            raise SystemExit(
                f"BENCHMARKS.md has no <!-- generated:{name} --> section; add the two marker lines where it belongs"
            )
        md = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), md)  # noqa: B023 (called here)
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
    if "serving" in results:
        r = results["serving"]
        qs.plot(
            qs.points(r["engines"], r["reference_perplexity"]),
            args.md.parent / PLOT,
            f"SmolLM2-135M-Instruct, {r['threads']} threads, run {r['date']}",
        )
    write(args.md.with_suffix(".json"), json.dumps({**info, "results": results}, indent=2) + "\n")
    print(
        f"wrote {args.md}, {args.md.with_suffix('.json')}"
        + (f" and {args.md.parent / PLOT}" if "serving" in results else "")
        + f" from {', '.join(results)}"
    )


if __name__ == "__main__":
    main()
