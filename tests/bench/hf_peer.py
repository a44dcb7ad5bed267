"""Peers in Enclave's own environment: transformers ``generate`` on the converted fp32 checkpoint,
and onnxruntime-genai's C++ generation loop on an int4 model from its model builder. One process
each (run as a subprocess), so its peak memory is its own.

Run: python -m tests.bench.hf_peer transformers|genai PATH --threads 2 --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import time

from tests.bench.workload import peak_rss_mb, single_stream


def transformers_engine(path: str, threads: int):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    class Clock(BaseStreamer):
        def __init__(self, sent: float) -> None:
            self.sent, self.arrivals, self.prompt_seen = sent, [], False

        def put(self, value) -> None:
            if self.prompt_seen:  # the first call hands over the prompt
                self.arrivals.append(time.perf_counter() - self.sent)
            self.prompt_seen = True

        def end(self) -> None:
            pass

    @torch.inference_mode()
    def generate(prompt: str, max_tokens: int) -> list[float]:
        clock = Clock(time.perf_counter())
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        model.generate(
            **ids,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            streamer=clock,
            pad_token_id=tok.eos_token_id,
        )
        return clock.arrivals

    encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return generate, encode, tok.decode, f"transformers {transformers.__version__}, torch {torch.__version__}"


def genai_engine(path: str, threads: int):
    import onnxruntime_genai as og

    config = og.Config(path)
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    tok = og.Tokenizer(model)

    def generate(prompt: str, max_tokens: int) -> list[float]:
        sent = time.perf_counter()
        ids = tok.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + max_tokens, min_length=len(ids) + max_tokens)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        arrivals = []
        while len(arrivals) < max_tokens and not gen.is_done():
            gen.generate_next_token()
            arrivals.append(time.perf_counter() - sent)
        return arrivals

    return (
        generate,
        lambda text: list(tok.encode(text)),
        lambda ids: tok.decode(ids),
        f"onnxruntime-genai {og.__version__}",
    )


ENGINES = {"transformers": transformers_engine, "genai": genai_engine}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", choices=ENGINES)
    parser.add_argument("path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    generate, encode, decode, version = ENGINES[args.engine](args.path, args.threads)
    result = single_stream(generate, encode, decode)
    result["peak_rss_mb"] = peak_rss_mb()
    result["version"] = version
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
