"""Automatic prefix caching: blocks keyed by a hash chain per adapter, evicted LRU under a byte
budget; cached and uncached prompts give identical logits and greedy output; the server counts
hits and queries in tokens and reports the cache's memory."""

from __future__ import annotations

import re
import urllib.request

import numpy as np
import pytest

from serve.config import PrefixCacheSettings
from serve.engine.prefix_cache import PrefixCache


def payload(start: int, end: int) -> list[np.ndarray]:
    return [np.full((2, end - start, 4), start, np.float32)]  # 32 bytes a token


def test_keys_chain_the_prefix_and_the_adapter():
    cache = PrefixCache(block_tokens=4, max_bytes=1 << 20)
    a = cache.keys(list(range(10)), None)
    assert len(a) == 2  # full blocks only
    assert cache.keys([0, 1, 2, 3, 9, 9, 9, 9], None)[0] == a[0]  # same first block, same key
    assert cache.keys([7, 1, 2, 3, 4, 5, 6, 7], None)[1] != a[1]  # same tokens, other prefix: other key
    assert cache.keys(list(range(10)), "legal") != a  # never shared across adapters


def test_lookup_reuses_whole_blocks_and_leaves_the_last_token_to_run():
    cache = PrefixCache(block_tokens=4, max_bytes=1 << 20)
    ids = list(range(12))
    assert cache.lookup(ids, None) == (0, [])
    cache.store(ids, None, payload)
    cached, blocks = cache.lookup(ids, None)
    assert cached == 8 and [b[0][0, 0, 0] for b in blocks] == [0, 4]  # 12 tokens: the third block must run
    cached, _ = cache.lookup([*ids, 99], None)
    assert cached == 12
    assert cache.lookup(ids, "other")[0] == 0
    stats = cache.take_stats()
    assert (stats.queries, stats.hits) == (12 + 12 + 13 + 12, 8 + 12)
    assert cache.take_stats().queries == 0


def test_least_recently_used_goes_first_tail_before_head():
    block = 4 * 32  # bytes of one block's payload
    cache = PrefixCache(block_tokens=4, max_bytes=3 * block)
    first, second = list(range(100, 109)), list(range(200, 209))  # two blocks each
    cache.store(first, None, payload)
    cache.store(second, None, payload)  # four blocks > budget: the first prompt's tail goes
    assert cache.bytes == 3 * block
    assert cache.lookup(first, None)[0] == 4  # its head still serves a shorter prefix
    assert cache.lookup(second, None)[0] == 8
    PrefixCache.clear(cache)
    assert cache.bytes == 0 and cache.lookup(second, None)[0] == 0


@pytest.fixture(scope="module")
def artifact(serve_repo):
    from enclave.repository import Repository

    return Repository(serve_repo).active("tiny-onnx").path


def greedy(model, prompt: list[int], steps: int) -> tuple[np.ndarray, list[int]]:
    logits, row = model.prefill(prompt, None)
    batch = model.new_batch()
    batch.add(row)
    out = [int(logits.argmax())]
    for _ in range(steps):
        out.append(int(batch.step([out[-1]])[0].argmax()))
    return logits, out


def test_cached_and_uncached_prompts_give_identical_output(artifact):
    from serve.backends.ort import Backend

    plain = Backend(artifact, threads=1, prefix_cache=PrefixCacheSettings(enabled=False))
    cached = Backend(artifact, threads=1, prefix_cache=PrefixCacheSettings(block_tokens=4))
    assert plain.prefix_cache is None
    system = [5, 9, 14, 7, 3, 3, 8, 21, 4, 11, 30, 2, 17]
    for question in ([40, 41, 42], [43, 44], [40, 41, 42, 50]):
        prompt = system + question
        want_logits, want = greedy(plain, prompt, 12)
        got_logits, got = greedy(cached, prompt, 12)
        np.testing.assert_allclose(got_logits, want_logits, rtol=1e-5, atol=1e-5)
        assert got == want
    stats = cached.prefix_cache.take_stats()
    # 16 tokens, then 15 reusing the system prompt's 3 whole blocks, then 17 reusing 4 (the first prompt's last)
    assert (stats.queries, stats.hits) == (16 + 15 + 17, 0 + 12 + 16)


def test_the_server_counts_prefix_hits_and_cache_memory(serve_repo):
    from enclave.grpc_client import Client
    from tests.serve.conftest import running, serve_config

    system = "You are a careful clinical assistant. Answer in one short sentence, and say when you are unsure. "
    with running(serve_config(serve_repo, prefix_cache__block_tokens=4)) as server:
        with Client(f"127.0.0.1:{server.port}") as c:
            first = c.generate(system + "What does BID mean?", max_tokens=8)
            second = c.generate(system + "What does BID mean?", max_tokens=8)
            c.generate(system + "What does PRN mean?", max_tokens=8)
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert second.text == first.text and second.token_ids == first.token_ids

    def value(name: str) -> float:
        return float(re.search(rf'^{name}{{model="tiny-onnx"}} (\S+)$', text, re.M).group(1))

    queries, hits = value("enclave_prefix_cache_queries_total"), value("enclave_prefix_cache_hits_total")
    assert hits > 0 and queries >= 3 * first.usage.prompt_tokens - 1 and hits < queries
    assert value("enclave_prefix_cache_bytes") > 0
