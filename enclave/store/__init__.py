"""The model store: ``$ENCLAVE_HOME/models/NAME`` artifact directories.

Everywhere a model name is accepted, a path is too: ``resolve_model`` turns either into a
verified checkpoint directory.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from enclave.atomic import TMP_MARK
from enclave.errors import EnclaveError, IntegrityError
from enclave.hf.checkpoint import check_checkpoint
from enclave.manifest import MANIFEST, Manifest, read_manifest, require_valid
from enclave.store.catalog import CATALOG

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


def home() -> Path:
    """The store root: ``$ENCLAVE_HOME``, default ``~/.cache/enclave``."""
    return Path(os.environ.get("ENCLAVE_HOME") or "~/.cache/enclave").expanduser()


def models_dir() -> Path:
    """The directory of model artifacts: ``$ENCLAVE_HOME/models``."""
    return home() / "models"


def _is_safe_name(value: object) -> bool:
    # fullmatch: NAME_RE's `$` alone would also accept a trailing newline.
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None and ".." not in value


def check_name(name: str, field: str = "name") -> str:
    """Refuse names that are not safe directory names (no ``/``, ``..``, upper case)."""
    if not _is_safe_name(name):
        raise EnclaveError(
            f"{field} {name!r} is not a valid model name",
            fix="use lower-case letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return name


def safe_name(value: object, field: str) -> str:
    """Check a name read from a manifest, a bundle or a request before it becomes one path component.

    The same rule as ``check_name`` (which request and CLI names follow), for names that arrive
    inside files: an artifact's ``name``, a bundle's artifact name and version.

    Args:
        value: the name; anything, since manifests are untrusted input.
        field: where it came from, as a user would find it (``manifest.json name of /path/adapter``).

    Returns:
        ``value``, unchanged.

    Raises:
        EnclaveError: not a string, or not a single safe directory name.
    """
    if not _is_safe_name(value):
        raise EnclaveError(
            f"{field} {value!r} is not a safe name: it must be one directory name (no '/', '..' or upper case)",
            fix="rename it to lower-case letters, digits, '.', '_' and '-', starting with a letter or digit "
            "(for an artifact, recreate it with such a name)",
        )
    return value


@dataclass(frozen=True)
class StoredModel:
    """One entry of `enclave models list`."""

    name: str
    path: Path
    manifest: Manifest | None
    error: str | None = None


def list_models() -> list[StoredModel]:
    """Every artifact directory in the store (unreadable manifests are listed with the error)."""
    root = models_dir()
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.iterdir()):
        if not path.is_dir() or path.name.startswith(".") or TMP_MARK in path.name:
            continue
        try:
            out.append(StoredModel(path.name, path, read_manifest(path)))
        except IntegrityError as exc:
            out.append(StoredModel(path.name, path, None, "; ".join(exc.problems)))
    return out


def _looks_like_path(ref: str) -> bool:
    return os.sep in ref or ref.startswith((".", "~")) or ref.endswith(".gguf") or Path(ref).exists()


@dataclass(frozen=True)
class ResolvedModel:
    """A checkpoint directory ready to load; ``manifest`` is None for a plain HF directory."""

    ref: str
    path: Path
    manifest: Manifest | None


def resolve_model(ref: str, verify: bool = True) -> ResolvedModel:
    """Turn a store name or a path into a checkpoint directory, verifying its hashes.

    Raises:
        EnclaveError: unknown name (the known names listed), a path that is not a
            checkpoint (what is missing), or an artifact that fails verification.
    """
    if _looks_like_path(ref):
        return _resolve_path(Path(ref).expanduser(), ref, verify)
    path = models_dir() / ref
    if not (path / MANIFEST).is_file():
        _unknown(ref)
    manifest = require_valid(path) if verify else read_manifest(path)
    return ResolvedModel(ref, path, manifest)


def _resolve_path(path: Path, ref: str, verify: bool) -> ResolvedModel:
    if not path.exists():
        raise EnclaveError(
            f"model path {ref!r} does not exist", fix="check the path, or use a name from `enclave models list`"
        )
    if path.is_file() and path.suffix == ".gguf":
        raise EnclaveError(
            f"{ref} is a GGUF file; Enclave runs converted checkpoints",
            fix=f"import it first: enclave models import {ref} --name NAME",
        )
    if (path / MANIFEST).is_file():
        manifest = require_valid(path) if verify else read_manifest(path)
        return ResolvedModel(ref, path, manifest)
    check_checkpoint(path)
    log.warning("%s has no manifest.json: its files cannot be verified (import it with `enclave models import`)", path)
    return ResolvedModel(ref, path, None)


def _unknown(ref: str) -> None:
    local = [m.name for m in list_models()]
    pullable = [n for n in CATALOG if n not in local]
    known = ", ".join(local) or "(none yet)"
    fix = "use one of the names above, a checkpoint path, or"
    fix += f" `enclave models pull {pullable[0]}`" if pullable else " `enclave models import PATH`"
    more = f"; pullable: {', '.join(pullable)}" if pullable else ""
    raise EnclaveError(f"unknown model {ref!r}. In the store ({models_dir()}): {known}{more}", fix=fix)


def find_by_digest(digest: str, near: Path | None = None) -> Path | None:
    """An artifact directory with this content digest: next to ``near`` first, then in the store."""
    places = ([near.parent] if near else []) + [models_dir(), home() / "artifacts", home() / "adapters"]
    for place in places:
        if not place.is_dir():
            continue
        for path in sorted(place.iterdir()):
            if (path / MANIFEST).is_file() and TMP_MARK not in path.name:
                try:
                    if read_manifest(path).digest == digest:
                        return path
                except IntegrityError:
                    continue
    return None


def resolve_adapter(ref: str) -> Path:
    """An adapter by path, or by name in ``$ENCLAVE_HOME/adapters``.

    Raises:
        EnclaveError: neither exists (the adapters in the store are listed).
    """
    path = Path(ref).expanduser()
    if path.exists():
        return path
    stored = home() / "adapters" / ref
    if _is_safe_name(ref) and (stored / MANIFEST).is_file():
        return stored
    root = home() / "adapters"
    known = sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []
    raise EnclaveError(
        f"no adapter {ref!r} (not a path, and not in {root}: {', '.join(known) or 'none yet'})",
        fix="pass an adapter directory, or tune one with `enclave tune`",
    )
