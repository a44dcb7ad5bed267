"""`enclave client`: call an Enclave server from the terminal (generate, stream, models, health, tokenize)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "call a running Enclave server: generate, stream, models, health, tokenize"
EPILOG = """examples:
  enclave client health
  enclave client models
  enclave client generate "What does BID mean on a chart?" --chat --max-tokens 48
  enclave client stream "Explain habeas corpus." --chat --adapter clinical-legal
  enclave client generate "What does PRN mean?" --system @ward-policy.txt --model smollm2-int4
  enclave client tokenize "Habeas corpus" --target 10.0.0.5:50051 --ca ca.pem
The token comes from --token or $ENCLAVE_TOKEN (never put it in shell history on shared machines)."""


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="client_action", metavar="ACTION", required=True)
    for name, helptext in (
        ("generate", "one completion, printed when done, with counts and timings on stderr"),
        ("stream", "a completion printed as it is generated"),
        ("models", "the models, versions and adapters the server runs"),
        ("health", "the server's grpc.health.v1 status (SERVING / NOT_SERVING)"),
        ("tokenize", "the token ids and pieces of a text"),
    ):
        p = sub.add_parser(name, help=helptext, description=helptext)
        _connection(p)
        if name == "health":
            p.add_argument(
                "--service",
                default="",
                help="a service name: '' (default) is ready to serve, 'liveness' is the process is up",
            )
        if name in ("generate", "stream", "tokenize"):
            p.add_argument("prompt", help="the text; '-' reads standard input")
            p.add_argument("--model", default="", help="model name (default: the server's default)")
            p.add_argument("--model-version", default="", help="version (default: the active one)")
            p.add_argument(
                "--chat", action="store_true", help="send the text as a user message (the chat template is applied)"
            )
            p.add_argument(
                "--system",
                help="a system message before the text (implies --chat); '@FILE' reads it from FILE. A system prompt "
                "many requests share is prefilled once and reused from the prefix cache (onnxruntime)",
            )
        if name in ("generate", "stream"):
            p.add_argument("--adapter", default="", help="an adapter loaded on the model")
            p.add_argument("--max-tokens", type=int, default=0, help="most tokens to generate (0: the server default)")
            p.add_argument(
                "--min-tokens", type=int, default=0, help="tokens to generate before end-of-sequence may end the output"
            )
            p.add_argument("--temperature", type=float, help="0 (default) is greedy")
            p.add_argument("--top-p", type=float)
            p.add_argument("--top-k", type=int, default=0)
            p.add_argument("--repetition-penalty", type=float)
            p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
            p.add_argument("--seed", type=int)
            p.add_argument("--request-id", default="")
        p.set_defaults(func=_run, action=name)


def _connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument(
        "--target",
        default=os.environ.get("ENCLAVE_TARGET", "127.0.0.1:50051"),
        help="host:port (default: $ENCLAVE_TARGET or 127.0.0.1:50051)",
    )
    g.add_argument("--token", default=os.environ.get("ENCLAVE_TOKEN"), help="bearer token (default: $ENCLAVE_TOKEN)")
    g.add_argument("--ca", help="CA certificate (PEM) of the server: turns TLS on")
    g.add_argument("--cert", help="client certificate (PEM), for mutual TLS")
    g.add_argument("--key", help="client key (PEM), for mutual TLS")
    g.add_argument("--server-name", help="the name in the server's certificate, if not the target host")
    g.add_argument("--timeout", type=float, default=300.0, help="deadline in seconds (default 300)")


def _run(args: argparse.Namespace) -> int:
    import grpc

    from enclave.grpc_client import Client

    client = Client(
        args.target,
        token=args.token,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        server_name=args.server_name,
        timeout=args.timeout,
    )
    try:
        with client:
            return ACTIONS[args.action](client, args)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


def _prompt(args) -> str | list[dict]:
    text = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not args.system:
        return text
    system = Path(args.system[1:]).read_text() if args.system.startswith("@") else args.system
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def _sampling(args) -> dict:
    return dict(
        model=args.model,
        version=args.model_version,
        adapter=args.adapter,
        chat=args.chat,
        request_id=args.request_id,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        stop=tuple(args.stop),
        seed=args.seed,
        min_tokens=args.min_tokens,
    )


def _summary(finish, usage, timings, model: str = "") -> str:
    from enclave.v1 import inference_pb2 as pb

    reason = pb.FinishReason.Name(finish).removeprefix("FINISH_REASON_").lower()
    served = f"{model}, " if model else ""
    return (
        f"[{served}{usage.prompt_tokens} prompt + {usage.completion_tokens} new tokens, finish: {reason}, "
        f"first token {timings.time_to_first_token_seconds:.2f} s, total {timings.total_seconds:.2f} s, "
        f"{timings.decode_tokens_per_second:.1f} tok/s]"
    )


def _generate(client, args) -> int:
    r = client.generate(_prompt(args), **_sampling(args))
    print(r.text)
    print(
        _summary(
            r.finish_reason, r.usage, r.timings, f"{r.model} v{r.model_version}{' + ' + r.adapter if r.adapter else ''}"
        ),
        file=sys.stderr,
    )
    return 0


def _stream(client, args) -> int:
    last = None
    for piece in client.stream(_prompt(args), **_sampling(args)):
        print(piece.text, end="", flush=True)
        last = piece
    print()
    if last is not None:
        print(_summary(last.finish_reason, last.usage, last.timings), file=sys.stderr)
    return 0


def _models(client, args) -> int:
    from rich.table import Table

    from enclave.ui import console

    table = Table("model", "backend", "kind", "context", "versions (* active)", "adapters")
    for m in client.models().models:
        versions = ", ".join(("*" if v.active else "") + v.version for v in m.versions)
        table.add_row(
            m.name, m.backend, m.kind, str(m.context_length), versions, ", ".join(a.name for a in m.adapters) or "-"
        )
    console().print(table)
    return 0


def _health(client, args) -> int:
    status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def _tokenize(client, args) -> int:
    r = client.tokenize(_prompt(args), model=args.model, version=args.model_version, chat=args.chat)
    print(f"{len(r.token_ids)} tokens")
    for i, piece in zip(r.token_ids, r.tokens):
        print(f"{i:>8}  {piece!r}")
    return 0


ACTIONS = {"generate": _generate, "stream": _stream, "models": _models, "health": _health, "tokenize": _tokenize}
