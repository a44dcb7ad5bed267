"""`enclave generate`: answer one prompt with a model, streaming to the terminal."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from enclave.config import add_config_flags, flag_values, load_config
from enclave.hf.generate import GenerateConfig

HELP = "generate a completion for one prompt (greedy by default, or sampled), streamed to the terminal"
log = logging.getLogger("enclave.hf.generate")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt; '-' reads it from standard input")
    parser.add_argument("--model", required=True, help="a store name (enclave models list) or a checkpoint path")
    parser.add_argument(
        "--adapter",
        help="an adapter from `enclave tune` to apply: a path or a name in $ENCLAVE_HOME/adapters "
        "(checked against the base)",
    )
    parser.add_argument("--config", type=Path, help="a YAML file of the settings below")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting, e.g. --set temperature=0.7"
    )
    add_config_flags(parser, GenerateConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from enclave.hf.generate import generate
    from enclave.hf.loader import load
    from enclave.store import resolve_model

    cfg = load_config(GenerateConfig, args.config, args.set, flags=flag_values(args))
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    model = resolve_model(args.model)
    lm, tokenizer = load(model, args.adapter)
    result = generate(lm, tokenizer, prompt, cfg, on_text=lambda t: print(t, end="", flush=True))
    print()
    n = len(result.token_ids)
    # Counts and timings only: prompt and completion text never reach the log.
    log.info(
        "%d prompt tokens, %d new tokens in %.2f s (%.1f tok/s), finish: %s",
        result.prompt_tokens,
        n,
        result.seconds,
        n / max(result.seconds, 1e-9),
        result.finish_reason,
    )
    return 0
