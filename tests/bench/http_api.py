"""The OpenAI-compatible HTTP API against gRPC on the same server (issue #19, BENCHMARKS.md "The
OpenAI-compatible API"): 8 concurrent streams through each, on SmolLM2-135M-Instruct's ONNX int8
export, side by side in one run, alternating (gRPC, HTTP, three rounds), the best of three each: on
2 cores the client's own threads share the machine, and a round's figures move by 10%.

The HTTP side is what an application written against OpenAI's API runs: the `openai` SDK,
streamed chat completions with ``stream_options.include_usage``; tokens are counted from the usage
it reports. The gRPC side is `enclave.grpc_client`, streamed, tokens counted as they arrive. Both
ask for the same fixed length (``min_tokens`` = ``max_tokens``), greedy.

Run: python -m tests.bench.http_api [--threads 2] [--out bench-results]
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import tempfile
import time
from pathlib import Path

from tests.bench.engine import DECODE, server, streams
from tests.bench.serving import free_port, int8_repo
from tests.bench.workload import OPENINGS, conclude, serving_args

STREAMS, REQUESTS, ROUNDS = 8, 24, 3
BARS = {  # name: (what, threshold, higher is better)
    "http_8_vs_grpc": ("8 streams through the OpenAI HTTP API / through gRPC, tokens/s", 0.9, True),
}


def http_streams(port: int, n: int = STREAMS, requests: int = REQUESTS) -> float:
    """Tokens/s of ``n`` OpenAI SDK callers streaming chat completions back to back."""
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)

    def one(i: int) -> int:
        chunks = client.chat.completions.create(
            model="bench",
            messages=[{"role": "user", "content": OPENINGS[i % len(OPENINGS)]}],
            max_tokens=DECODE,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"min_tokens": DECODE},
        )
        return next(c.usage.completion_tokens for c in chunks if c.usage is not None)

    one(0)  # warm
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(n) as pool:
        tokens = sum(pool.map(one, range(requests)))
    return tokens / (time.perf_counter() - started)


def main() -> None:
    args = serving_args(__doc__)
    r: dict = {"threads": args.threads, "streams": STREAMS, "requests": REQUESTS, "decode_tokens": DECODE}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("http bench: export int8", flush=True)
        repo = int8_repo(args.model, work)
        port = free_port()
        with server(repo.root, [], args.threads, f"http_port={port}") as (target, _):
            grpc_runs, http_runs = [], []
            for _ in range(ROUNDS):
                print("http bench: 8 streams through gRPC, then through HTTP", flush=True)
                grpc_runs.append(streams(target, [""] * STREAMS, REQUESTS))
                http_runs.append(http_streams(port))
    r["grpc_8"], r["http_8"] = max(grpc_runs), max(http_runs)
    r["runs"] = {"grpc": grpc_runs, "http": http_runs}
    values = {"http_8_vs_grpc": r["http_8"] / r["grpc_8"]}
    conclude(args.out, "http_api", r, BARS, values)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
