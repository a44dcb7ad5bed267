"""`enclave bundle`: signed offline bundles for machines with no network (keygen, create, verify, install)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "carry artifacts (and the wheels to serve them) to an air-gapped machine: keygen, create, verify, install"
ACTIONS = ("keygen", "create", "verify", "install")
EPILOG = """examples:
  enclave bundle keygen site-a                         writes site-a.key (keep it) and site-a.pub (give it out)
  enclave bundle create clinic.tar --key site-a.key \\
      --model clinical-legal@1=~/.cache/enclave/artifacts/clinical-legal-onnx \\
      --adapter ~/.cache/enclave/adapters/clinical-legal --wheels
  enclave bundle create clinic.tar --key site-a.key --from-repo serve-repo/
                                                       the active versions and adapters of a repository
  enclave bundle verify clinic.tar --key site-a.pub
  enclave bundle install clinic.tar --key site-a.pub --repo /var/lib/enclave/repo --activate

A bundle is one tar: bundle.json (every file with its size and sha256, the artifacts' lineage, creator
and time), its Ed25519 signature, the artifacts, and with --wheels enclave-llm[serve] and its
dependencies pinned by hash. verify and install check the signature against the public keys given
with --key (default: $ENCLAVE_HOME/trusted-keys/*.pub) and every file before anything is installed."""


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="bundle_action", metavar="ACTION", required=True)
    p = sub.add_parser("keygen", help="make an Ed25519 key pair: NAME.key (private, mode 0600) and NAME.pub")
    p.add_argument("name", type=Path, help="path prefix of the two files")
    p.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="encrypt the private key with the passphrase in this environment variable",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing key files")
    p.set_defaults(func=_keygen)
    p = sub.add_parser("create", help="write a signed bundle of artifacts (and optionally wheels)")
    p.add_argument("out", type=Path, help="the .tar file to write")
    p.add_argument("--key", type=Path, required=True, help="the private key (NAME.key from keygen)")
    p.add_argument("--passphrase-env", metavar="VAR", help="the variable holding the private key's passphrase")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME[@VERSION]=]PATH",
        help="a servable artifact; installs as models/NAME/VERSION (default: the directory name, version 1)",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="PATH",
        help="an adapter from `enclave tune` (a path or a name in the store)",
    )
    p.add_argument(
        "--from-repo",
        type=Path,
        metavar="REPO",
        help="every model's active version and every adapter of a serve repository",
    )
    p.add_argument(
        "--wheels",
        action="store_true",
        help="add enclave-llm[serve] and its dependencies as wheels (needs the package index)",
    )
    p.add_argument(
        "--extras",
        default="serve",
        help="with --wheels: the extras to install, e.g. serve,torch for HF checkpoints (default: serve)",
    )
    p.add_argument("--python-version", help="with --wheels: the target's Python, e.g. 3.11 (default: this one)")
    p.add_argument(
        "--platform", help="with --wheels: the target's platform tag, e.g. manylinux_2_28_x86_64 (default: this one)"
    )
    p.add_argument(
        "--enclave-wheel",
        type=Path,
        help="with --wheels: the enclave-llm wheel to ship (default: built from this checkout)",
    )
    p.add_argument("--creator", help="who made it, recorded in bundle.json (default: user@host)")
    p.set_defaults(func=_create)
    for action, text in (
        ("verify", "check the signature and every file; print what is wrong, file by file"),
        ("install", "verify, then unpack into a model repository and install the wheels (pip --no-index)"),
    ):
        p = sub.add_parser(action, help=text)
        p.add_argument("bundle", type=Path, help="the bundle .tar")
        p.add_argument(
            "--key",
            type=Path,
            action="append",
            default=[],
            help="a trusted public key (repeatable; default $ENCLAVE_HOME/trusted-keys/*.pub)",
        )
        p.set_defaults(func=_verify)
    p.add_argument("--repo", type=Path, required=True, help="the model repository to install into (created if missing)")
    p.add_argument(
        "--activate", action="store_true", help="make the installed versions active (a new model is always active)"
    )
    p.add_argument("--no-wheels", action="store_true", help="install the artifacts only, not the bundle's wheels")
    p.add_argument("--python", help="the interpreter whose environment receives the wheels (default: this one)")
    p.set_defaults(func=_install)


def _keygen(args: argparse.Namespace) -> int:
    from enclave.bundle.keys import keygen

    private, public, kid = keygen(args.name, args.passphrase_env, args.overwrite)
    print(
        f"key {kid}: private {private} (keep it on this machine), "
        f"public {public} (copy it to the machines that install)"
    )
    return 0


def _create(args: argparse.Namespace) -> int:
    import tempfile

    from enclave.bundle import create, keys, wheels
    from enclave.errors import EnclaveError
    from enclave.store import resolve_adapter

    private = keys.load_private(args.key, args.passphrase_env)
    parts = [
        create.artifact_sources(path, "model", name, version)
        for name, version, path in map(create.model_spec, args.model)
    ]
    parts += [create.artifact_sources(path, "adapter", path.name, None) for path in map(resolve_adapter, args.adapter)]
    if args.from_repo:
        parts += create.repository_sources(args.from_repo)
    if not parts:
        raise EnclaveError("nothing to bundle", fix="pass --model, --adapter or --from-repo")
    artifacts, sources = [a for a, _ in parts], [s for _, ss in parts for s in ss]
    with tempfile.TemporaryDirectory(prefix="enclave-wheels-") as tmp:
        info = None
        if args.wheels:
            print(f"downloading enclave-llm[{args.extras}] and its dependencies as wheels ...", file=sys.stderr)
            _warn_backends(artifacts, args.extras)
            info = wheels.download(Path(tmp), args.python_version, args.platform, args.enclave_wheel, args.extras)
            sources += create.wheel_sources(Path(tmp))
        manifest = create.write_bundle(args.out, private, artifacts, sources, info, args.creator)
    _summary(args.out, manifest)
    return 0


def _warn_backends(artifacts: list, extras: str) -> None:
    from serve.backends import BACKENDS

    needs_torch = [
        f"{a.name} ({a.kind})" for a in artifacts if a.role == "model" and BACKENDS.get(a.kind) == ("torch",)
    ]
    if needs_torch and "torch" not in extras.split(","):
        print(
            f"warning: {', '.join(needs_torch)} run on the torch backend, "
            f"which enclave-llm[{extras}] does not install; "
            f"add --extras {extras},torch, or ship ONNX exports",
            file=sys.stderr,
        )


def _summary(out: Path, manifest) -> None:
    from rich.markup import escape
    from rich.table import Table

    from enclave.manifest import sha256_file
    from enclave.ui import console

    table = Table("bundled", "kind", "installs as", "digest", "files", title=f"bundle {out}")
    for a in manifest.artifacts:
        count = sum(1 for f in manifest.files if f.path.startswith(a.path + "/"))
        table.add_row(f"{a.role} {a.name}", a.kind, a.path, a.digest[:19], str(count))
    if manifest.wheels:
        table.add_row(
            "wheels",
            escape(manifest.wheels.requirement),
            "pip --no-index",
            f"python {manifest.wheels.python_version}",
            str(manifest.wheels.count),
        )
    con = console()
    con.print(table)
    size = Path(out).stat().st_size
    print(f"{out}: {size / 1e6:.1f} MB, {len(manifest.files)} files, signed by key {manifest.key_id}")
    print(f"sha256 {sha256_file(Path(out))}  (compare it on the target before the first install)")


def _verify(args: argparse.Namespace) -> int:
    from enclave.bundle.keys import trusted_keys
    from enclave.bundle.reader import read_bundle

    report = read_bundle(args.bundle, trusted_keys(args.key))
    if not report.ok:
        print(f"FAILED {args.bundle}", file=sys.stderr)
        for problem in report.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    m = report.manifest
    arts = ", ".join(f"{a.role} {a.name}" + (f"@{a.version}" if a.version else "") for a in m.artifacts)
    wheels = f", {m.wheels.count} wheels" if m.wheels else ""
    print(
        f"ok     {args.bundle}  (signed by {report.signed_by}, made by {m.creator} at {m.created_at}, "
        f"{report.checked} files checked: {arts}{wheels})"
    )
    return 0


def _install(args: argparse.Namespace) -> int:
    from enclave.bundle.install import install_bundle
    from enclave.bundle.keys import trusted_keys

    report, done = install_bundle(
        args.bundle, trusted_keys(args.key), args.repo, args.activate, not args.no_wheels, args.python
    )
    print(f"verified {args.bundle}: signed by {report.signed_by}, {report.checked} files checked")
    for label in done.placed:
        print(f"installed {label} into {args.repo}")
    for label in done.skipped:
        print(f"already there: {label} (same digest)")
    if done.wheels:
        print(f"installed {done.wheels} wheels into {args.python or sys.executable} (no index)")
    return 0
