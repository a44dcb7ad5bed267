"""Load a vLLM artifact directory with vLLM and generate greedily; print one JSON line.

Runs under the Python that has vLLM (its own environment), so it imports nothing from Enclave.
Usage: python vllm_check.py DIR --prompts '[[1, 2, 3]]' [--new-tokens 16] [--adapter NAME ...]
"""

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root")
    parser.add_argument("--prompts", required=True, help="a JSON list of token id lists")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--adapter", action="append", default=[], help="an adapter name under ROOT/adapters")
    args = parser.parse_args()

    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    started = time.perf_counter()
    lora = {"enable_lora": True, "max_loras": max(1, len(args.adapter)), "max_lora_rank": 64} if args.adapter else {}
    with open(f"{args.root}/config.json") as fh:
        context = min(1024, json.load(fh).get("max_position_embeddings") or 1024)
    # On CPU the "gpu" memory share is the RAM vLLM reserves (mostly KV cache); a check needs little.
    llm = LLM(
        model=args.root, max_model_len=context, seed=0, trust_remote_code=False, gpu_memory_utilization=0.2, **lora
    )
    loaded = time.perf_counter() - started
    params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens)
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in json.loads(args.prompts)]
    outputs = {"base": [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]}
    if args.adapter:
        from vllm.lora.request import LoRARequest

        for i, name in enumerate(args.adapter, start=1):
            request = LoRARequest(name, i, f"{args.root}/adapters/{name}")
            outputs[name] = [
                list(o.outputs[0].token_ids)
                for o in llm.generate(prompts, params, lora_request=request, use_tqdm=False)
            ]
    config = llm.llm_engine.model_config
    print(
        json.dumps(
            {
                "vllm_version": vllm.__version__,
                "load_seconds": round(loaded, 2),
                "dtype": str(config.dtype),
                "quantization": config.quantization,
                "outputs": outputs,
            }
        )
    )


if __name__ == "__main__":
    main()
