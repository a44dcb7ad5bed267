"""Optional dependencies, imported only where used, with an install hint when absent."""

from __future__ import annotations

import importlib
from types import ModuleType

from enclave.errors import EnclaveError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or explain which extra installs it.

    Args:
        module: the import name, e.g. ``torch``.
        extra: the ``enclave-llm`` extra that provides it, e.g. ``torch``.

    Raises:
        EnclaveError: the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EnclaveError(
            f"this command needs the Python package {module!r}, which is not installed ({exc})",
            fix=f"pip install 'enclave-llm[{extra}]' (or `make install` in a source checkout)",
        ) from None
