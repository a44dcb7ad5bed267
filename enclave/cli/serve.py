"""`enclave serve`: run the gRPC server on a model repository, and manage that repository."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "serve models over gRPC (run the server: the default), or manage its model repository (add, activate, rollback, list)"
ACTIONS = ("run", "add", "add-adapter", "activate", "rollback", "list")
DEFAULT_ACTION = "run"
EPILOG = """examples:
  enclave serve add ~/.cache/enclave/artifacts/clinical-legal-onnx --repo repo/ --name clinical-legal --version 1
  enclave serve add-adapter ~/.cache/enclave/adapters/clinical-legal --repo repo/
  enclave serve --repo repo/ --port 50051 --metrics-port 9464
  enclave serve --config serve.yaml tls.cert=server.pem tls.key=server.key auth.tokens_file=tokens.yaml
  enclave serve activate clinical-legal 2 --repo repo/      a running server switches within watch_seconds
  enclave serve rollback clinical-legal --repo repo/        back to the version active before
  enclave serve list --repo repo/

settings (YAML keys, or key=value):
"""


def register(parser: argparse.ArgumentParser) -> None:
    from enclave.config import add_config_flags, describe
    from serve.config import ServeConfig

    parser.epilog = EPILOG + "\n".join(describe(ServeConfig))
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="serve_action", metavar="ACTION", required=True)
    p = sub.add_parser("run", help="start the server (the default action); SIGTERM drains it")
    p.add_argument("--config", type=Path, help="a YAML file of serve settings")
    add_config_flags(p, ServeConfig)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. limits.max_new_tokens=512")
    p.set_defaults(func=_run)
    p = sub.add_parser("add", help="copy an artifact into the repository as MODEL/VERSION (verified), active unless --inactive")
    p.add_argument("artifact", type=Path, help="an artifact directory (onnx, vllm, or an HF checkpoint with a manifest)")
    _repo(p)
    p.add_argument("--name", required=True, help="the model name clients use")
    p.add_argument("--version", required=True, help="a version label, e.g. 1 or 2026-11-24")
    p.add_argument("--inactive", action="store_true", help="add it without making it the active version")
    p.set_defaults(func=_add)
    p = sub.add_parser("add-adapter", help="copy an adapter from `enclave tune` into REPO/adapters (verified)")
    p.add_argument("artifact", type=Path, help="an adapter directory, or a name in $ENCLAVE_HOME/adapters")
    _repo(p)
    p.set_defaults(func=_add_adapter)
    p = sub.add_parser("activate", help="make a version the active one (atomically); a running server switches to it")
    p.add_argument("model")
    p.add_argument("version")
    _repo(p)
    p.set_defaults(func=_activate)
    p = sub.add_parser("rollback", help="make the previously active version active again")
    p.add_argument("model")
    _repo(p)
    p.set_defaults(func=_rollback)
    p = sub.add_parser("list", help="the repository's models, versions and adapters")
    _repo(p)
    p.set_defaults(func=_list)


def _repo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", type=Path, required=True, help="the model repository directory")


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from enclave.config import flag_values, load_config
    from serve.config import ServeConfig
    from serve.server import serve

    cfg = load_config(ServeConfig, args.config, args.overrides, flags=flag_values(args))
    return asyncio.run(serve(cfg))


def _add(args: argparse.Namespace) -> int:
    from serve.repository import Repository

    v = Repository(args.repo).add(args.artifact.expanduser(), args.name, args.version, activate=not args.inactive)
    state = "active" if v.active or not args.inactive else "inactive"
    print(f"added {args.name} version {args.version} ({v.manifest.kind}, {v.manifest.digest[:19]}), {state}")
    return 0


def _add_adapter(args: argparse.Namespace) -> int:
    from enclave.store import resolve_adapter
    from serve.repository import Repository

    m = Repository(args.repo).add_adapter(resolve_adapter(str(args.artifact)))
    print(f"added adapter {m.name} ({m.digest[:19]}); load it with `adapters: {{MODEL: [{m.name}]}}` or the LoadAdapter rpc")
    return 0


def _activate(args: argparse.Namespace) -> int:
    from serve.repository import Repository

    Repository(args.repo).activate(args.model, args.version)
    print(f"{args.model}: version {args.version} is active")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from serve.repository import Repository

    print(f"{args.model}: version {Repository(args.repo).rollback(args.model)} is active again")
    return 0


def _list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from enclave.ui import console
    from serve.repository import Repository

    repo = Repository(args.repo)
    table = Table("model", "version", "kind", "digest", "active")
    for model in repo.models():
        for v in repo.versions(model):
            table.add_row(model, v.version, v.manifest.kind, v.manifest.digest[:19], "yes" if v.active else "")
    console().print(table)
    adapters = sorted(p.name for p in repo.adapters_dir.iterdir()) if repo.adapters_dir.is_dir() else []
    print(f"adapters: {', '.join(adapters) or 'none'}")
    return 0
