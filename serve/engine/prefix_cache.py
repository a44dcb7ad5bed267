"""Automatic prefix caching: the KV of prompt prefixes that requests share, kept and reused.

As in vLLM's automatic prefix caching (``vllm/v1/core/kv_cache_utils.py``), a prompt is cut into
full blocks of ``block_tokens`` tokens and each block is keyed by a hash of its tokens chained to
the key of the block before it, so a key stands for the whole prefix up to its block. The chain
starts from the adapter's name: two adapters never share a block (their KV differs), and each
loaded model version has its own cache. Blocks are evicted least recently used first when the
cache holds more than ``max_bytes``; a chain is touched from its last block to its first, so its
tail goes before its head (a head without its tail still serves a shorter prefix; a tail without
its head serves nothing).

The cache holds opaque payloads (the backend's arrays for one block) and knows nothing of
requests or scheduling; a backend asks ``lookup`` before a prefill and calls ``store`` after it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class PrefixStats:
    """Counts since the last ``PrefixCache.take_stats``: prompt tokens looked up and found."""

    queries: int = 0
    hits: int = 0


class PrefixCache:
    """Blocks of KV keyed by their prefix's hash chain, evicted LRU under a byte budget."""

    def __init__(self, block_tokens: int, max_bytes: int) -> None:
        self.block_tokens, self.max_bytes = block_tokens, max_bytes
        self.blocks: OrderedDict[bytes, list[np.ndarray]] = OrderedDict()
        self.bytes = 0
        self.stats = PrefixStats()
        self.lock = threading.Lock()  # the engine thread writes; the metrics read

    def keys(self, ids: list[int], adapter: str | None) -> list[bytes]:
        """The chained key of every full block of ``ids``."""
        b, key, out = self.block_tokens, (adapter or "").encode(), []
        for start in range(0, len(ids) - b + 1, b):
            key = hashlib.sha256(key + np.asarray(ids[start : start + b], np.int64).tobytes()).digest()
            out.append(key)
        return out

    def lookup(self, ids: list[int], adapter: str | None) -> tuple[int, list[list[np.ndarray]]]:
        """The longest cached prefix of ``ids`` that leaves at least one token to run.

        Args:
            ids: the prompt's token ids.
            adapter: the adapter the prompt runs with (None: the base model).

        Returns:
            How many tokens are cached, and their blocks' payloads in order.
        """
        keys = self.keys(ids[:-1], adapter)  # the last token must run: its logits are sampled
        found = []
        with self.lock:
            for key in keys:
                payload = self.blocks.get(key)
                if payload is None:
                    break
                found.append(payload)
            self._touch(keys[: len(found)])
            self.stats.queries += len(ids)
            self.stats.hits += len(found) * self.block_tokens
        return len(found) * self.block_tokens, found

    def store(self, ids: list[int], adapter: str | None, block: Callable[[int, int], list[np.ndarray]]) -> None:
        """Keep every full block of ``ids`` not cached yet; ``block(start, end)`` copies its KV out."""
        b, keys = self.block_tokens, self.keys(ids, adapter)
        with self.lock:
            for i, key in enumerate(keys):
                if key not in self.blocks:
                    payload = block(i * b, (i + 1) * b)
                    self.blocks[key] = payload
                    self.bytes += sum(a.nbytes for a in payload)
            self._touch(keys)
            while self.bytes > self.max_bytes and self.blocks:
                _, evicted = self.blocks.popitem(last=False)
                self.bytes -= sum(a.nbytes for a in evicted)

    def _touch(self, chain: list[bytes]) -> None:
        for key in reversed(chain):  # the head ends most recently used: evicted last
            self.blocks.move_to_end(key)

    def take_stats(self) -> PrefixStats:
        """The counts since the last call (for counters), and reset them."""
        with self.lock:
            stats, self.stats = self.stats, PrefixStats()
        return stats

    def clear(self) -> None:
        """Drop every block (an adapter unloaded, a model closed)."""
        with self.lock:
            self.blocks.clear()
            self.bytes = 0
