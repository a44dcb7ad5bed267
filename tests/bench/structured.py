"""Structured output's cost (issue #19, BENCHMARKS.md "The OpenAI-compatible API"): decode
tokens/s of answers constrained to a JSON schema against free answers of the same length, one
stream and 8 streams, on SmolLM2-135M-Instruct's ONNX int8 export, through gRPC, side by side in
one run (alternating, the best of each).

The schema asks for one string of 600 to 900 characters, so a constrained answer runs to
``max_tokens`` as the free one does (``min_tokens`` = ``max_tokens``): the two differ only in the
grammar's mask on every token.

Run: python -m tests.bench.structured [--threads 2] [--out bench-results]
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import tempfile
import time
from pathlib import Path

from tests.bench.engine import server
from tests.bench.serving import int8_repo
from tests.bench.workload import OPENINGS, conclude, serving_args

TOKENS, STREAMS, REQUESTS, ROUNDS = 128, 8, 16, 3
SCHEMA = {
    "type": "object",
    "properties": {"summary": {"type": "string", "minLength": 600, "maxLength": 900}},
    "required": ["summary"],
}
BARS = {  # name: (what, threshold, higher is better)
    "json_1_vs_free": ("1 stream, JSON-schema answers / free answers, decode tokens/s", 0.85, True),
    "json_8_vs_free": ("8 streams, JSON-schema answers / free answers, tokens/s", 0.85, True),
}


def one(target: str, i: int, constrained: bool) -> tuple[int, float]:
    """One request: (tokens generated, its decode tokens/s)."""
    from enclave.grpc_client import Client
    from enclave.v1 import inference_pb2 as pb

    with Client(target, timeout=600) as c:
        request = c.request(OPENINGS[i % len(OPENINGS)], model="bench", max_tokens=TOKENS, min_tokens=TOKENS)
        if constrained:
            request.sampling.min_tokens = 0  # the grammar decides the end (its string runs past max_tokens)
            request.sampling.response_format.CopyFrom(
                pb.ResponseFormat(type="json_schema", json_schema=json.dumps(SCHEMA))
            )
        reply = c.inference.Generate(request, timeout=600)
        return reply.usage.completion_tokens, reply.timings.decode_tokens_per_second


def streams(target: str, constrained: bool) -> float:
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(STREAMS) as pool:
        tokens = sum(n for n, _ in pool.map(lambda i: one(target, i, constrained), range(REQUESTS)))
    return tokens / (time.perf_counter() - started)


def main() -> None:
    args = serving_args(__doc__)
    r: dict = {"threads": args.threads, "tokens": TOKENS, "streams": STREAMS, "schema": SCHEMA}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("structured bench: export int8", flush=True)
        repo = int8_repo(args.model, work)
        with server(repo.root, [], args.threads) as (target, _):
            one(target, 0, True)
            one(target, 0, False)
            best = {"free_1": 0.0, "json_1": 0.0, "free_8": 0.0, "json_8": 0.0}
            for i in range(ROUNDS):
                print(f"structured bench: round {i + 1} of {ROUNDS}", flush=True)
                for constrained, key in ((False, "free"), (True, "json")):
                    best[f"{key}_1"] = max(best[f"{key}_1"], one(target, i, constrained)[1])
                    best[f"{key}_8"] = max(best[f"{key}_8"], streams(target, constrained))
    r.update(best)
    values = {"json_1_vs_free": best["json_1"] / best["free_1"], "json_8_vs_free": best["json_8"] / best["free_8"]}
    conclude(args.out, "structured", r, BARS, values)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
