"""`enclave verify DIR...`: check every file of artifacts against their manifests."""

from __future__ import annotations

import argparse
import sys

from enclave.errors import IntegrityError
from enclave.manifest import verify

HELP = "check every file of an artifact against its manifest.json (hash, size, unlisted files)"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="DIR", help="artifact directories to check")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.paths:
        try:
            manifest, problems = verify(path)
        except IntegrityError as exc:
            manifest, problems = None, exc.problems
        if problems:
            failed += 1
            print(f"FAILED {path}", file=sys.stderr)
            for problem in problems:
                print(f"  - {problem}", file=sys.stderr)
        else:
            print(
                f"ok     {path}  "
                f"({manifest.kind} {manifest.name}, {len(manifest.files)} files, {manifest.digest[:19]}…)"
            )
    return 1 if failed else 0
