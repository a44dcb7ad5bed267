"""`enclave serve`: run the gRPC server on a model repository, and manage that repository."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "serve models over gRPC (run the server: the default), "
    "or manage its model repository (add, activate, rollback, list)"
)
ACTIONS = ("run", "add", "add-adapter", "activate", "rollback", "canary", "promote", "list", "token", "cert")
DEFAULT_ACTION = "run"
EPILOG = """examples:
  enclave serve add ~/.cache/enclave/artifacts/clinical-legal-onnx --repo repo/ --name clinical-legal --version 1
  enclave serve add-adapter ~/.cache/enclave/adapters/clinical-legal --repo repo/
  enclave serve --repo repo/ --port 50051 --metrics-port 9464
  enclave serve --config serve.yaml tls.cert=server.pem tls.key=server.key auth.tokens_file=tokens.yaml
  enclave serve activate clinical-legal 2 --repo repo/      a running server switches within watch_seconds
  enclave serve rollback clinical-legal --repo repo/        back to the version active before
  enclave serve add-adapter clinical-legal-2 --version 2 --repo repo/    a second version of an adapter
  enclave serve canary clinical-legal --version 2 --share 0.1 --repo repo/   10% of its requests to version 2
  enclave serve promote clinical-legal --repo repo/         the canary becomes the active version
  enclave serve rollback --adapter clinical-legal --repo repo/
  enclave serve list --repo repo/
  enclave serve token create --name ehr-gateway --role reader --tokens-file tokens.yaml   prints the token once
  enclave serve token revoke --name ehr-gateway --tokens-file tokens.yaml                 a running server drops it
  enclave serve cert create certs/ --host enclave.hospital.local --host 10.0.0.7 --client ehr-gateway   a test CA

security: on any address but loopback the server needs tls.cert, tls.key and auth.tokens_file (or
insecure: true); the Admin service needs a token with role admin. Tokens files and certificates
reload when they change or on SIGHUP.

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
    p = sub.add_parser(
        "add", help="copy an artifact into the repository as MODEL/VERSION (verified), active unless --inactive"
    )
    p.add_argument(
        "artifact", type=Path, help="an artifact directory (onnx, vllm, or an HF checkpoint with a manifest)"
    )
    _repo(p)
    p.add_argument("--name", required=True, help="the model name clients use")
    p.add_argument("--version", required=True, help="a version label, e.g. 1 or 2026-11-24")
    p.add_argument("--inactive", action="store_true", help="add it without making it the active version")
    p.set_defaults(func=_add)
    p = sub.add_parser("add-adapter", help="copy an adapter from `enclave tune` into REPO/adapters (verified)")
    p.add_argument("artifact", type=Path, help="an adapter directory, or a name in $ENCLAVE_HOME/adapters")
    _repo(p)
    p.add_argument(
        "--version",
        help="add it as this version of the adapter named in its manifest (REPO/adapters/NAME@VERSION): the first "
        "version becomes the active one, later ones wait for `canary` or `promote`",
    )
    p.set_defaults(func=_add_adapter)
    p = sub.add_parser("activate", help="make a version the active one (atomically); a running server switches to it")
    p.add_argument("model")
    p.add_argument("version")
    _repo(p)
    p.set_defaults(func=_activate)
    p = sub.add_parser("rollback", help="make the previously active version (of a model, or --adapter) active again")
    p.add_argument("model", nargs="?", help="the model (or give --adapter)")
    p.add_argument("--adapter", help="roll back this versioned adapter instead (any canary ends)")
    _repo(p)
    p.set_defaults(func=_rollback)
    p = sub.add_parser(
        "canary", help="send a share of a versioned adapter's requests to another version; a running server follows"
    )
    p.add_argument("adapter")
    p.add_argument("--version", required=True, help="the version to try")
    p.add_argument("--share", type=float, required=True, help="the share of requests it gets, 0 to 1 (0 ends it)")
    _repo(p)
    p.set_defaults(func=_canary)
    p = sub.add_parser("promote", help="make a versioned adapter's canary (or --version) its active version")
    p.add_argument("adapter")
    p.add_argument("--version", help="the version to make active (default: the canary's)")
    _repo(p)
    p.set_defaults(func=_promote)
    p = sub.add_parser("list", help="the repository's models, versions and adapters")
    _repo(p)
    p.set_defaults(func=_list)
    _register_token(
        sub.add_parser("token", help="bearer tokens: create one (printed once, its sha256 stored), add, revoke")
    )
    p = sub.add_parser(
        "cert", help="a test certificate authority with server and client certificates (for TLS and mTLS trials)"
    )
    cert = p.add_subparsers(dest="cert_action", metavar="ACTION", required=True)
    p = cert.add_parser("create", help="write ca.pem, server.pem/.key (and client.pem/.key) into DIR; keys mode 0600")
    p.add_argument("dir", type=Path, help="output directory")
    p.add_argument(
        "--host",
        action="append",
        default=[],
        help="a DNS name or IP address clients connect to (repeat; default localhost, 127.0.0.1)",
    )
    p.add_argument(
        "--client",
        metavar="NAME",
        help="also issue a client certificate with this name (for tls.client_ca, mutual TLS)",
    )
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.add_argument("--force", action="store_true", help="replace files already in DIR")
    p.set_defaults(func=_cert_create)


def _register_token(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="token_action", metavar="ACTION", required=True)

    def common(p, role=True):
        p.add_argument(
            "--name", required=True, help="who holds the token (shown in logs; the audit log records a hash id)"
        )
        p.add_argument(
            "--tokens-file", type=Path, default=None, help="the tokens file (default $ENCLAVE_HOME/serve/tokens.yaml)"
        )
        if role:
            p.add_argument(
                "--role",
                choices=("reader", "admin", "reviewer"),
                default="reader",
                help="reader: Inference; admin: also the Admin service; reviewer: also the Review service (feedback)",
            )
            p.add_argument("--models", nargs="+", metavar="MODEL", help="only these models (default: all)")
            p.add_argument(
                "--title",
                help="reviewers: what kind of expert (pharmacist): exported with their corrections instead of a name",
            )

    p = sub.add_parser("create", help="make a 256-bit token: it goes to stdout once, only its sha256 goes in the file")
    common(p)
    p.set_defaults(func=_token_create)
    p = sub.add_parser(
        "add", help="register a token read from standard input (from a site's secret store); weak ones are refused"
    )
    common(p)
    p.set_defaults(func=_token_add)
    p = sub.add_parser(
        "revoke", help="remove a token's entry; a running server stops accepting it within watch_seconds"
    )
    common(p, role=False)
    p.set_defaults(func=_token_revoke)


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
    from enclave.repository import Repository

    v = Repository(args.repo).add(args.artifact.expanduser(), args.name, args.version, activate=not args.inactive)
    state = "active" if v.active or not args.inactive else "inactive"
    print(f"added {args.name} version {args.version} ({v.manifest.kind}, {v.manifest.digest[:19]}), {state}")
    return 0


def _add_adapter(args: argparse.Namespace) -> int:
    from enclave.repository import Repository
    from enclave.store import resolve_adapter

    repo = Repository(args.repo)
    m = repo.add_adapter(resolve_adapter(str(args.artifact)), args.version)
    if args.version is None:
        print(
            f"added adapter {m.name} ({m.digest[:19]}); "
            f"load it with `adapters: {{MODEL: [{m.name}]}}` or the LoadAdapter rpc"
        )
        return 0
    active = repo.releases(m.name)["active"]
    if active == args.version:
        print(f"added adapter {m.name} version {args.version} ({m.digest[:19]}), active: {m.name}'s requests go to it")
        return 0
    print(
        f"added adapter {m.name} version {args.version} ({m.digest[:19]}), not active (version {active} is); try it "
        f"with `enclave serve canary {m.name} --version {args.version} --share 0.1`, make it active with `promote`"
    )
    return 0


def _activate(args: argparse.Namespace) -> int:
    from enclave.repository import Repository

    Repository(args.repo).activate(args.model, args.version)
    print(f"{args.model}: version {args.version} is active")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from enclave.errors import EnclaveError
    from enclave.repository import Repository

    if (args.model is None) == (args.adapter is None):
        raise EnclaveError("rollback: give a model or --adapter NAME, not both", fix="e.g. rollback --adapter NAME")
    if args.adapter is not None:
        back = Repository(args.repo).rollback_adapter(args.adapter)
        print(f"adapter {args.adapter}: version {back} is active again")
        return 0
    print(f"{args.model}: version {Repository(args.repo).rollback(args.model)} is active again")
    return 0


def _canary(args: argparse.Namespace) -> int:
    from enclave.repository import Repository

    Repository(args.repo).canary(args.adapter, args.version, args.share)
    print(f"adapter {args.adapter}: {args.share:.0%} of its requests go to version {args.version}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from enclave.repository import Repository

    version = Repository(args.repo).promote(args.adapter, args.version)
    print(f"adapter {args.adapter}: version {version} is active (the canary ended)")
    return 0


def _list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from enclave.repository import Repository
    from enclave.ui import console

    repo = Repository(args.repo)
    table = Table("model", "version", "kind", "digest", "active")
    for model in repo.models():
        for v in repo.versions(model):
            table.add_row(model, v.version, v.manifest.kind, v.manifest.digest[:19], "yes" if v.active else "")
    console().print(table)
    adapters = sorted(p.name for p in repo.adapters_dir.iterdir()) if repo.adapters_dir.is_dir() else []
    print(f"adapters: {', '.join(adapters) or 'none'}")
    for name in sorted({a.split("@", 1)[0] for a in adapters if "@" in a}):
        state = repo.releases(name) or {}
        canary = state.get("canary")
        also = f", {canary['share']:.0%} to version {canary['version']}" if canary else ""
        print(f"  {name}: version {state.get('active', '?')} active{also}")
    return 0


def _tokens_file(args: argparse.Namespace) -> Path:
    from enclave.store import home

    return args.tokens_file.expanduser() if args.tokens_file else home() / "serve" / "tokens.yaml"


def _token_create(args: argparse.Namespace, token: str | None = None) -> int:
    import sys

    from serve.auth import add_token

    path = _tokens_file(args)
    token = add_token(path, args.name, args.role, args.models, token, args.title)
    print(
        f"added {args.name} ({args.role}) to {path}; the token is shown once, below: give it to its holder over a "
        f"channel you trust (clients send it as `authorization: Bearer TOKEN`)",
        file=sys.stderr,
    )
    if token is not None and args.token_action == "create":
        print(token)
    return 0


def _token_add(args: argparse.Namespace) -> int:
    import sys

    from enclave.errors import EnclaveError

    token = sys.stdin.readline().strip()
    if not token:
        raise EnclaveError(
            "standard input: no token",
            fix="pipe the token in, e.g. `vault read -field=token ... | enclave serve token add ...`",
        )
    return _token_create(args, token)


def _token_revoke(args: argparse.Namespace) -> int:
    from serve.auth import revoke_token

    path = _tokens_file(args)
    revoke_token(path, args.name)
    print(f"revoked {args.name} in {path}")
    return 0


def _cert_create(args: argparse.Namespace) -> int:
    from serve.certs import create_certificates

    issued = create_certificates(args.dir, args.host or ["localhost", "127.0.0.1"], args.client, args.days, args.force)
    print(
        f"wrote a test CA and certificates to {args.dir}:\n"
        f"  server: tls.cert={issued.cert} tls.key={issued.key}\n"
        f"  clients trust: {issued.ca}  (enclave client --ca {issued.ca})"
    )
    if issued.client_cert:
        print(f"  mutual TLS: tls.client_ca={issued.ca}; client: --cert {issued.client_cert} --key {issued.client_key}")
    print(f"  keep {issued.ca_key} offline: it signs certificates this server's clients trust")
    return 0
