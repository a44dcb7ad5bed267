"""Optional dependencies, imported only where used, with an install hint when absent."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
from types import ModuleType

from enclave.errors import EnclaveError

# Libraries that import GPTQModel when it is installed (PEFT, for its quantized LoRA layers).
_IMPORTS_GPTQMODEL = ("peft",)


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or explain which extra installs it.

    Args:
        module: the import name, e.g. ``torch``.
        extra: the ``enclave-llm`` extra that provides it, e.g. ``torch``.

    Raises:
        EnclaveError: the module is not installed.
    """
    if module in _IMPORTS_GPTQMODEL:
        with contextlib.suppress(EnclaveError):
            require_gptqmodel(module)  # imported first, quietly: its banner never reaches the user's stdout
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EnclaveError(
            f"this command needs the Python package {module!r}, which is not installed ({exc})",
            fix=f"pip install 'enclave-llm[{extra}]' (or `make install` in a source checkout)",
        ) from None


GPTQMODEL_FIX = (
    "make install (source checkout), or: pip install --no-deps gptqmodel==7.7.0 (its metadata asks for "
    "torch>=2.14.1, which would replace the CPU torch 2.13.0; its other requirements come with enclave-llm[compress])"
)


def require_gptqmodel(why: str) -> ModuleType:
    """Import GPTQModel (installed without its dependency metadata, so no extra names it).

    Its CPU worker pool must not ask for more workers than there are cores ("Virtual pool ...
    requests 2 workers" on a 2-core machine): set before the import.
    """
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, os.cpu_count() or 1)))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its import prints a banner and environment notes
            return importlib.import_module("gptqmodel")
    except ImportError as exc:
        raise EnclaveError(f"{why} needs GPTQModel, which is not installed ({exc})", fix=GPTQMODEL_FIX) from None
