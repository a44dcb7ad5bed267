"""Load: many concurrent streams of mixed lengths, models and adapters over loopback. Every
accepted request completes; beyond the configured queue the answer is RESOURCE_EXHAUSTED;
nothing else goes wrong; resident memory stays flat between the first and the last requests."""

from __future__ import annotations

import concurrent.futures as cf
import random
import threading
import time

import grpc
import pytest

from tests.reliability.conftest import profile, rss_mb
from tests.serve.conftest import running, serve_config

pytestmark = pytest.mark.reliability

STREAMS = 64
REQUESTS = profile(600, 2000)
WINDOW = profile(150, 500)  # the first and last this many requests are compared for memory
MODELS = [("tiny-onnx", ""), ("tiny", ""), ("tiny", "facts")]
PROMPTS = [
    "The patient was given",
    "Habeas corpus",
    "Blood pressure was",
    "The court granted the motion to",
    "no acute distress",
    "twice a day",
    "The tenant shall",
]


def test_64_streams_mixed_requests_complete_or_are_refused_cleanly(serve_repo, record):
    from enclave.grpc_client import Client

    # 8 running + 48 queued per model is below the 64 callers by design, to exercise the refusal path under
    # load: the bound holds at every moment, and a refused caller retries at once, so refusals pile up
    # (most callers end up waiting on the slower torch model).
    cfg = serve_config(
        serve_repo,
        scheduler__max_batch_size=8,
        scheduler__max_queued=48,
        limits__max_streams_per_token=STREAMS,
        adapters={"tiny": ["facts"]},
    )
    outcomes, rss, lock = [], {}, threading.Lock()
    rng = random.Random(0)
    plan = [(rng.choice(MODELS), rng.choice(PROMPTS), rng.randint(1, 40), rng.random() < 0.5) for _ in range(REQUESTS)]
    with running(cfg) as server:

        def one(i: int):
            (model, adapter), prompt, max_tokens, stream = plan[i]
            with Client(f"127.0.0.1:{server.port}", timeout=120) as c:
                try:
                    if stream:
                        pieces = list(c.stream(prompt, model=model, adapter=adapter, max_tokens=max_tokens))
                        finish, tokens = pieces[-1].finish_reason, sum(len(p.token_ids) for p in pieces)
                    else:
                        reply = c.generate(prompt, model=model, adapter=adapter, max_tokens=max_tokens)
                        finish, tokens = reply.finish_reason, len(reply.token_ids)
                    result = ("ok", finish, tokens <= max_tokens)
                except grpc.RpcError as e:
                    result = (e.code().name, e.details(), None)
            with lock:
                outcomes.append(result)
                if len(outcomes) == WINDOW:
                    rss["first"] = rss_mb()
                if len(outcomes) == REQUESTS - WINDOW:
                    rss["last_start"] = rss_mb()
            return result

        started = time.monotonic()
        with cf.ThreadPoolExecutor(STREAMS) as pool:
            list(pool.map(one, range(REQUESTS)))
        seconds = time.monotonic() - started
        rss["end"] = rss_mb()
    codes = {}
    for status, *_ in outcomes:
        codes[status] = codes.get(status, 0) + 1
    unexpected = [o for o in outcomes if o[0] not in ("ok", "RESOURCE_EXHAUSTED")]
    assert not unexpected, unexpected[:5]
    assert all(o[1] != 0 and o[2] for o in outcomes if o[0] == "ok")  # every accepted one finished, within max_tokens
    refused = [o for o in outcomes if o[0] == "RESOURCE_EXHAUSTED"]
    assert all("busy" in o[1] or "calls open" in o[1] for o in refused)
    growth = (rss["end"] - rss["first"]) / rss["first"]
    record(
        {
            "streams": STREAMS,
            "requests": REQUESTS,
            "codes": codes,
            "seconds": round(seconds, 1),
            "rss_after_first_mb": round(rss["first"], 1),
            "rss_end_mb": round(rss["end"], 1),
            "rss_growth": round(growth, 4),
            "window": WINDOW,
        }
    )
    assert codes.get("ok", 0) > REQUESTS // 3
    assert growth < 0.10, f"resident memory grew {growth:.1%} between the first and the last {WINDOW} requests"
