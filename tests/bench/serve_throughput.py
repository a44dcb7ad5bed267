"""Serving throughput with continuous batching, measured side by side in one run (BENCHMARKS.md).

A real server (in this process) on a repository with SmolLM2-135M-Instruct as an int4 ONNX
export (onnxruntime backend) and as the fp32 checkpoint (torch backend): the same model on both. Two workloads: "chat" (the
demo's short questions; answers of a few words, so prefill dominates) and "completion" (raw
text continued for 64 tokens, so decoding dominates). Each is sent with 1, 4 and 8 callers at
a time (greedy); printed: aggregate generated tokens per second, its ratio to one caller, and
median time to first token and inter-token latency from the server's own timings.

Run: python -m tests.bench.serve_throughput [--onnx DIR] [--model NAME] [--requests 16] [--out DIR]
(--onnx: an int4 ONNX artifact of the model; default: exported here, about a minute.)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import statistics
import tempfile
import threading
import time
from pathlib import Path

from enclave.client import Client
from enclave.store import resolve_model
from serve.config import ServeConfig
from serve.repository import Repository
from serve.server import Server
from tests.bench.compress_quality import save

QUESTIONS = [
    "A patient's chart says 'BID'. What does that mean?", "A patient's chart says 'PRN'. What does that mean?",
    "Explain briefly what 'habeas corpus' means in law.", "Explain briefly what 'tort' means in law.",
    "What does 'NPO' mean on a hospital order?", "What does 'stat' mean in a medical order?",
    "What is a plea in a criminal case?", "What does 'qhs' mean on a prescription?",
]  # fmt: skip
OPENINGS = [
    "The court granted the motion to dismiss because", "The patient was admitted to the ward with",
    "Under the terms of the lease, the tenant", "The nurse recorded the blood pressure and",
    "In the appeal, counsel for the defendant argued that", "The discharge summary notes that the patient",
    "The contract may be terminated by either party if", "After the surgery, the physician recommended",
]  # fmt: skip
WORKLOADS = {"chat": (QUESTIONS, True), "completion": (OPENINGS, False)}


def onnx_artifact(model: str, given: Path | None, tmp: Path) -> Path:
    if given:
        return given
    from compress import registry
    from compress.config import ExportSettings

    return registry.get("export").run(model, ExportSettings(precision="int4"), tmp / "onnx", "bench-onnx")


def run_load(port: int, model: str, workload: str, callers: int, requests: int) -> dict:
    texts, chat = WORKLOADS[workload]

    def one(i: int):
        with Client(f"127.0.0.1:{port}") as c:
            return c.generate(texts[i % len(texts)], chat=chat, model=model, max_tokens=64)

    started = time.perf_counter()
    with cf.ThreadPoolExecutor(callers) as pool:
        replies = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    tokens = sum(r.usage.completion_tokens for r in replies)
    itl = [(r.timings.total_seconds - r.timings.time_to_first_token_seconds) / max(1, r.usage.completion_tokens - 1) for r in replies]
    return {"callers": callers, "requests": requests, "tokens": tokens, "seconds": round(wall, 2), "tokens_per_second": round(tokens / wall, 1),
            "ttft_p50": round(statistics.median(r.timings.time_to_first_token_seconds for r in replies), 3),
            "itl_p50": round(statistics.median(itl), 4)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--onnx", type=Path, help="an int4 ONNX artifact of --model (default: exported here)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        repo = Repository(tmp / "repo")
        repo.add(onnx_artifact(args.model, args.onnx, tmp), "onnx-int4", "1")
        repo.add(resolve_model(args.model).path, "torch-fp32", "1")
        cfg = ServeConfig(repo=str(repo.root), port=0, metrics_port=None, scheduler={"max_batch_size": 8})
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()

        async def make():
            return Server(cfg)

        server = asyncio.run_coroutine_threadsafe(make(), loop).result()
        asyncio.run_coroutine_threadsafe(server.start(), loop).result()
        rows = []
        for model in ("onnx-int4", "torch-fp32"):
            run_load(server.port, model, "chat", 2, 2)  # warm
            for workload in WORKLOADS:
                base = None
                for callers in (1, 4, 8):
                    row = {"model": model, "workload": workload, **run_load(server.port, model, workload, callers, args.requests)}
                    base = base or row["tokens_per_second"]
                    row["vs_1_caller"] = round(row["tokens_per_second"] / base, 2)
                    rows.append(row)
                    print(f"{model:11} {workload:10} callers {callers}: {row['tokens_per_second']:6.1f} tok/s ({row['vs_1_caller']:.2f}x), "
                          f"{row['tokens'] / row['requests']:4.1f} tokens/answer, TTFT p50 {row['ttft_p50']:.3f} s, "
                          f"ITL p50 {row['itl_p50'] * 1000:.1f} ms", flush=True)  # fmt: skip
        asyncio.run_coroutine_threadsafe(server.stop(5), loop).result()
    save(args.out, "serve_throughput", {"rows": rows})


if __name__ == "__main__":
    main()
