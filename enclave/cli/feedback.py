"""`enclave feedback`: the reviewers' feedback a server kept (keygen, export, purge, check)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from enclave.errors import EnclaveError

HELP = "reviewers' feedback: make the key (keygen), export training data (export), drop old text (purge), check"
ACTIONS = ("keygen", "export", "purge", "check")
EPILOG = """examples:
  enclave feedback keygen /etc/enclave/secrets/feedback.key          the key text is sealed with (0600)
  enclave feedback export --config serve.yaml --model clinical-legal --out corrections.jsonl
  enclave feedback purge --config serve.yaml                         text past feedback.retention_days
  enclave feedback check --config serve.yaml                         integrity, counts, keys that open

The server keeps one row per answer (request id, model, version, adapter) and each reviewer's
rating in feedback.store; prompt, answer, correction and reason only for models with
feedback.capture_text, sealed with AES-256-GCM under feedback.key_file. export writes corrections
as chat records and rated pairs as preference records (prompt, chosen, rejected) that
`enclave tune check-data` reads; it counts them per reviewer title and version, never naming
a reviewer. Run purge daily (cron or a systemd timer): text older than the retention goes, ratings
and ids stay."""


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="feedback_action", metavar="ACTION", required=True)
    p = sub.add_parser("keygen", help="write a new AES-256 key file (mode 0600) for feedback.key_file")
    p.add_argument("file", type=Path, help="where to write it (never overwritten)")
    p.set_defaults(func=_keygen)

    def where(p):
        p.add_argument("--config", type=Path, help="the serve config: its feedback.store and feedback.key_file")
        p.add_argument("--store", type=Path, help="the feedback store (instead of --config)")
        p.add_argument("--key-file", type=Path, help="the key text was sealed with (instead of --config)")

    p = sub.add_parser("export", help="write a model's corrections and rated pairs as a training file")
    where(p)
    p.add_argument("--model", required=True, help="the served model whose answers were rated")
    p.add_argument("--out", type=Path, required=True, help="the JSONL file to write (written whole, then renamed)")
    p.set_defaults(func=_export)
    p = sub.add_parser("purge", help="drop text older than the retention, and unrated answers older than it")
    where(p)
    p.add_argument("--older-than", type=float, metavar="DAYS", help="instead of feedback.retention_days")
    p.set_defaults(func=_purge)
    p = sub.add_parser("check", help="check the store's integrity and that its sealed text opens; print counts")
    where(p)
    p.set_defaults(func=_check)


def _keygen(args: argparse.Namespace) -> int:
    from serve.feedback.crypto import keygen

    path = keygen(args.file)
    print(f"wrote {path} (mode 0600): set feedback.key_file to it; back it up, the text it seals needs it")
    return 0


def _settings(args: argparse.Namespace):
    """(store path, key path or None, retention days) from --config or the flags."""
    store, key, days = None, None, 30.0
    if args.config is not None:
        from enclave.config import load_config
        from serve.config import ServeConfig

        cfg = load_config(ServeConfig, args.config).feedback
        store, key, days = cfg.store, cfg.key_file, cfg.retention_days
    store = args.store or store
    key = args.key_file or key
    if store is None:
        raise EnclaveError("no feedback store given", fix="pass --config SERVE.yaml (with feedback.store) or --store")
    if not Path(store).expanduser().is_file():
        raise EnclaveError(f"feedback store {store} does not exist", fix="pass the server's feedback.store path")
    return Path(store), (Path(key) if key else None), days


def _open(args: argparse.Namespace):
    from serve.feedback.crypto import Sealer, read_key
    from serve.feedback.store import Store

    store, key, days = _settings(args)
    sealer = Sealer(read_key(key, "--key-file")) if key is not None else None
    return Store(store), sealer, days


def _export(args: argparse.Namespace) -> int:
    import json

    from rich.table import Table

    from enclave.atomic import atomic_write_bytes
    from enclave.ui import console
    from serve.feedback.export import export

    store, sealer, _days = _open(args)
    try:
        records, summary = export(store, sealer, args.model)
    finally:
        store.close()
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_bytes(args.out, text.encode())
    t = Table(title=f"Feedback on {args.model} -> {args.out}")
    for column in ("reviewer", "version", "adapter", "kind", "records"):
        t.add_column(column, justify="right" if column == "records" else "left")
    for (title, version, adapter, kind), n in sorted(summary.records.items()):
        t.add_row(title, version, adapter or "(base)", kind, str(n))
    con = console()
    con.print(t)
    con.print(
        f"{summary.answers} rated answer(s); {len(records)} record(s) written; "
        f"{summary.without_text} without text (capture_text was off); "
        f"{summary.ratings_only} rated without a correction or a counterpart"
    )
    print(args.out)
    return 0


def _purge(args: argparse.Namespace) -> int:
    import time

    store, _sealer, days = _open(args)
    days = args.older_than if args.older_than is not None else days
    try:
        texts, unrated = store.purge(time.time() - days * 86400)
    finally:
        store.close()
    print(f"purged {texts} text row(s) and {unrated} unrated answer(s) older than {days:g} days")
    return 0


def _check(args: argparse.Namespace) -> int:
    from serve.feedback.store import Answer, Rating

    store, sealer, _days = _open(args)  # opening runs SQLite's integrity check
    failed: list[str] = []
    try:
        counts = store.counts()
        if sealer is not None:
            for row in store.db.execute("SELECT * FROM answers WHERE prompt IS NOT NULL"):
                a = Answer(*row)
                for name, blob in (("prompt", a.prompt), ("answer", a.answer)):
                    _try(sealer, blob, f"answers/{a.request_id}/{name}", failed)
            for row in store.db.execute("SELECT * FROM feedback"):
                r = Rating(*row)
                for name, blob in (("correction", r.correction), ("reason", r.reason)):
                    if blob is not None:
                        _try(sealer, blob, f"feedback/{r.id}/{name}", failed)
    finally:
        store.close()
    for name, n in counts.items():
        print(f"{name:28} {n}")
    if failed:
        print(f"{len(failed)} sealed value(s) do not open:", file=sys.stderr)
        for f in failed:
            print(f"  {f}", file=sys.stderr)
        return 1
    print("ok" if sealer is not None else "ok (integrity only: no key given, sealed text not opened)")
    return 0


def _try(sealer, blob: bytes, where: str, failed: list[str]) -> None:
    try:
        sealer.open(blob, where)
    except ValueError as exc:
        failed.append(str(exc))
