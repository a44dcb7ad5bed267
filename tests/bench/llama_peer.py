"""Perplexity of GGUF files in llama.cpp, by the same evaluation as Enclave's: the shared
definition (``enclave.evaluation.perplexity.text_perplexity``, which `enclave compress report`,
the transformers and the ONNX figures go through) on the same token ids (the held-out text
tokenized once, in Enclave's environment, by the model's own tokenizer, no special tokens, the
first 2,049 ids), so the windows (non-overlapping, 512 tokens, each from an empty cache, no BOS
added, every position scored) and the arithmetic (float64 log-softmax) are the same code.

llama.cpp only computes the logits, through llama-cpp-python (``logits_all``, flash attention on
as in the served runs, the build tests/bench/build-llama.sh made). Not `llama-perplexity`: it
adds a BOS token to each chunk and scores only the second half of it. Nor llama.cpp's own
tokenizer: it splits runs of newlines and spaces differently from the model's tokenizer, so it
would score a different sequence. Runs in the peers' environment (.venv-bench) from the
repository root, which puts ``enclave.evaluation`` (numpy only) on the path.

Run: .venv-bench/bin/python -m tests.bench.llama_peer --ids IDS.json --threads 2 --out FILE.json GGUF...
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from enclave.evaluation.perplexity import text_perplexity

WINDOW = 512


class LlamaCppLM:
    """The ``token_logprobs`` half of ``enclave.evaluation.lm.LanguageModel`` over a GGUF file."""

    engine = "llama.cpp"

    def __init__(self, path: str, threads: int, window: int = WINDOW) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(
            path,
            n_ctx=window + 1,
            n_batch=window,
            n_ubatch=window,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=True,
            flash_attn=True,
            verbose=False,
        )
        self.context_length = window + 1  # a window of `window` positions scores `window + 1` ids

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()  # an empty cache for every window
        self.llm.eval(ids[:-1])
        logits = np.asarray(self.llm.scores[: len(ids) - 1], np.float64)  # (T, vocab)
        top = logits.max(-1, keepdims=True)
        logz = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[:, 0]
        return logits[np.arange(len(ids) - 1), ids[1:]] - logz

    def close(self) -> None:
        self.llm.close()


def perplexity(path: str, ids: list[int], threads: int) -> float:
    lm = LlamaCppLM(path, threads)
    try:
        return text_perplexity(lm, ids, WINDOW)
    finally:
        lm.close()


def main() -> None:
    import llama_cpp

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", nargs="+")
    parser.add_argument("--ids", required=True, help="JSON list of the token ids to score")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.ids) as f:
        ids = json.load(f)
    result = {
        "version": llama_cpp.__version__,
        "tokens": len(ids) - 1,
        "perplexity": {p: perplexity(p, ids, args.threads) for p in args.gguf},
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
