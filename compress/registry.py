"""Compression methods, looked up by name (register, don't branch; PEFT's ``register_peft_method``).

Each method is a folder ``compress/<method>/`` whose ``config.py`` registers its settings class:

    @register("prune", module="compress.prune.run", order=20, help="...")
    class PruneSettings(Step): ...

and whose ``run.py`` holds ``run(source, settings, out, name, overwrite) -> Path``. The registry
finds the folders itself, so adding a method touches only its own folder: the recipe's ``step:``
key, ``enclave compress <method>`` and its flags come from here. ``config.py`` imports only
pydantic; ``run.py`` (torch and the rest) is imported when the method runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from enclave.errors import EnclaveError


@dataclass(frozen=True)
class Method:
    """A registered method: its name, settings class, the module of its ``run``, and its help line."""

    name: str
    settings: type
    module: str
    help: str
    order: int

    @property
    def run(self) -> Callable:
        """``run(source, settings, out, name, overwrite=False) -> Path`` (imports the method's code)."""
        return importlib.import_module(self.module).run


METHODS: dict[str, Method] = {}


def register(name: str, module: str, help: str, order: int = 100) -> Callable[[type], type]:
    """Class decorator on a method's settings: ``step: NAME`` in recipes, `enclave compress NAME`.

    Args:
        name: the method's name (the settings' ``step`` value).
        module: the module that defines the method's ``run`` function.
        help: one line for `enclave compress --help`.
        order: position in help texts (pipeline order: merge before prune before export).

    Returns:
        The decorator, which returns the class unchanged.
    """

    def wrap(settings: type) -> type:
        METHODS[name] = Method(name, settings, module, help, order)
        return settings

    return wrap


def methods() -> list[Method]:
    """Every method, in pipeline order."""
    _discover()
    return sorted(METHODS.values(), key=lambda m: (m.order, m.name))


def get(name: str) -> Method:
    """The method called ``name``.

    Raises:
        EnclaveError: no method has that name (the message lists the ones there are).
    """
    _discover()
    if name not in METHODS:
        raise EnclaveError(f"unknown compress step {name!r}", fix=f"available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def _discover() -> None:
    # Importing each method folder's config.py registers it.
    import compress

    for info in pkgutil.iter_modules(compress.__path__):
        if info.ispkg and importlib.util.find_spec(f"compress.{info.name}.config") is not None:
            importlib.import_module(f"compress.{info.name}.config")
