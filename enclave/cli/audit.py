"""`enclave audit verify FILE`: check the hash chain of a server's audit log and its rotated files."""

from __future__ import annotations

import argparse
import sys

from enclave.errors import EnclaveError

HELP = "check that the server's audit log (and its rotated files) has no edited, missing or reordered line"
ACTIONS = ("verify",)
EPILOG = """examples:
  enclave audit verify /var/log/enclave/audit.jsonl      reads audit.jsonl.N ... audit.jsonl.1, then audit.jsonl

Each line carries its sequence number and the sha256 of the line before it. verify exits 0 when the
chain is whole, and 1 naming the first broken line (FILE:LINE) and why: edited, missing or moved,
unreadable or cut short. Keep the head hash it prints somewhere else: a later verify must reach it."""


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="audit_action", metavar="ACTION", required=True)
    p = sub.add_parser(
        "verify",
        help="check the hash chain of FILE and FILE.N beside it; exit 1 at the first broken line",
        description="Read FILE.N ... FILE.1, then FILE, as one hash chain. Exit 0 and print the files, "
        "lines, seq and time range and the head hash when it is whole; exit 1 naming the first broken "
        "line (FILE:LINE) and why.",
    )
    p.add_argument("file", metavar="FILE", help="the audit file the server writes (audit_log in its config)")
    p.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    from enclave.audit import verify_chain

    try:
        report = verify_chain(args.file)
    except FileNotFoundError as exc:
        raise EnclaveError(str(exc), fix="pass the audit_log path of the server's config") from None
    names = ", ".join(p.name for p in report.files)
    if report.problem is not None:
        print(f"FAILED {args.file}", file=sys.stderr)
        print(f"  {report.problem}", file=sys.stderr)
        good = f"seq {report.first_seq} to {report.last_seq}" if report.lines else "none"
        print(f"  before it: {report.lines} good lines ({good}); files: {names}", file=sys.stderr)
        return 1
    if not report.lines:
        print(f"ok     {args.file}  (empty: no lines yet)")
        return 0
    start = "the start of the chain" if report.from_genesis else "older files were rotated away"
    print(f"ok     {args.file}")
    print(f"  files  {len(report.files)}: {names}")
    print(f"  lines  {report.lines}, seq {report.first_seq} to {report.last_seq} (seq {report.first_seq}: {start})")
    print(f"  time   {report.first_time} to {report.last_time}")
    print(f"  head   {report.head}")
    return 0
