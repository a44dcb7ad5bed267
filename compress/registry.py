"""Steps are looked up by name (register, don't branch)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from enclave.errors import EnclaveError


@dataclass(frozen=True)
class Step:
    """A registered step: its settings class and the function that runs it."""

    name: str
    settings: type
    run: Callable


STEPS: dict[str, Step] = {}


def register(name: str, settings: type) -> Callable:
    """Decorator: ``@register("prune", PruneSettings)`` on ``run(source, settings, out) -> Path``."""

    def wrap(fn: Callable) -> Callable:
        STEPS[name] = Step(name, settings, fn)
        return fn

    return wrap


def get(name: str) -> Step:
    _load_all()
    if name not in STEPS:
        raise EnclaveError(f"unknown compress step {name!r}", fix=f"available: {', '.join(sorted(STEPS))}")
    return STEPS[name]


def _load_all() -> None:
    # Importing the step modules registers them; each imports torch only when it runs.
    import compress.distil.run  # noqa: F401
    import compress.export.run  # noqa: F401
    import compress.merge.run  # noqa: F401
    import compress.prune.run  # noqa: F401
    import compress.quantize.run  # noqa: F401
