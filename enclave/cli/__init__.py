"""The `enclave` command: one entry point, one module per subcommand.

Each module in ``COMMANDS`` defines ``HELP`` (one line), ``register(parser)`` and
``run(args) -> int``; a test keeps this table and the modules in ``enclave/cli`` in sync.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from enclave import __version__
from enclave.errors import EnclaveError
from enclave.log import setup_logging

COMMANDS = {
    "models": "enclave.cli.models",
    "verify": "enclave.cli.verify",
    "generate": "enclave.cli.generate",
    "tune": "enclave.cli.tune",
    "eval": "enclave.cli.eval",
    "compress": "enclave.cli.compress",
    "serve": "enclave.cli.serve",
    "client": "enclave.cli.client",
    "bundle": "enclave.cli.bundle",
    "audit": "enclave.cli.audit",
    "feedback": "enclave.cli.feedback",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enclave",
        description="Enclave: tune, compress and serve language models on local hardware.",
        epilog="Run `enclave COMMAND --help` for the options of each command. "
        "Models live in $ENCLAVE_HOME (default ~/.cache/enclave).",
    )
    parser.add_argument("--version", action="version", version=f"enclave {__version__}")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="log as readable text (default) or one JSON object a line",
    )
    parser.add_argument("--debug", action="store_true", help="verbose logs, and a traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.register(cmd)
    return parser


def default_action(argv: list[str]) -> list[str]:
    """Insert a command's DEFAULT_ACTION: `enclave tune --config r.yaml` means `enclave tune run ...`."""
    for i, token in enumerate(argv):
        if token in COMMANDS:
            module = importlib.import_module(COMMANDS[token])
            actions, default = getattr(module, "ACTIONS", ()), getattr(module, "DEFAULT_ACTION", None)
            rest = argv[i + 1 :]
            if default and not (rest and (rest[0] in actions or rest[0] in ("-h", "--help"))):
                return [*argv[: i + 1], default, *rest]
            return argv
    return argv


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    # Enclave never talks to a model hub: every model comes from the store or a local path.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(var, "1")
    # PEFT 0.21 calls a transformers method that 5.x renamed; harmless, printed on every load.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(default_action(list(sys.argv[1:] if argv is None else argv)))
    setup_logging(args.log_format, args.debug)
    try:
        return int(args.func(args) or 0)
    except EnclaveError as exc:
        if args.debug:
            logging.getLogger("enclave").exception("failed")
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so briefly, traceback only with --debug
        if args.debug:
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc}\n  re-run with --debug for the traceback, "
            "and report it if it persists",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
