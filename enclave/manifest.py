"""The artifact contract: a directory plus a ``manifest.json`` describing it.

Every artifact Enclave writes (base model, adapter, merged, pruned, distilled, quantized,
ONNX, vLLM, bundle) records its kind, lineage (parents by content digest), settings,
metrics and every file with size and sha256. ``manifest.json`` itself is not in the file
list, so metrics can be added later (``update_metrics``) without changing the digest.
The JSON Schema lives in ``enclave/schema/manifest.schema.json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from enclave import __version__
from enclave.atomic import atomic_dir, atomic_write_bytes
from enclave.errors import EnclaveError, IntegrityError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ArtifactKind = Literal["base_model", "adapter", "merged", "pruned", "distilled", "quantized", "onnx", "vllm", "bundle"]
_HEX64 = r"^[0-9a-f]{64}$"
_DIGEST = r"^sha256:[0-9a-f]{64}$"
_PROGRESS_BYTES = 64 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class FileEntry(_Strict):
    """One file of an artifact, relative to the artifact directory."""

    path: str = Field(min_length=1)
    """Relative POSIX path inside the artifact directory."""
    size: int = Field(ge=0)
    """Size in bytes."""
    sha256: str = Field(pattern=_HEX64)
    """Hex sha256 of the file's bytes."""


class Parent(_Strict):
    """An artifact this one was made from."""

    kind: ArtifactKind
    """The parent's kind."""
    digest: str = Field(pattern=_DIGEST)
    """The parent's content digest (its manifest's ``digest``)."""
    name: str | None = None
    """The parent's name, for people; the digest is what identifies it."""
    role: str | None = None
    """What the parent was used as: base, adapter, teacher, calibration..."""


class Manifest(_Strict):
    """The contents of ``manifest.json``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    """Version of this schema; readers refuse versions they do not know."""
    kind: ArtifactKind
    """What the artifact is."""
    name: str = Field(min_length=1)
    """A human name: model name, adapter name."""
    enclave_version: str
    """The Enclave version that wrote it."""
    created_at: str
    """Creation time, ISO 8601 UTC."""
    digest: str = Field(pattern=_DIGEST)
    """Content digest: sha256 over the sorted (path, size, sha256) lines of ``files``."""
    parents: list[Parent] = []
    """The artifacts it was made from (lineage)."""
    settings: dict[str, Any] = {}
    """The settings that produced it (config, source, versions)."""
    metrics: dict[str, Any] = {}
    """Measurements (loss, perplexity, scores); may be added after creation."""
    files: list[FileEntry]
    """Every file except manifest.json, sorted by path."""

    def to_json(self) -> bytes:
        """The bytes of ``manifest.json``: indented JSON, fields in schema order, ending with a newline."""
        return (json.dumps(self.model_dump(), indent=2, sort_keys=False) + "\n").encode()

    def as_parent(self, role: str | None = None) -> Parent:
        """This artifact as a lineage entry of a child artifact."""
        return Parent(kind=self.kind, digest=self.digest, name=self.name, role=role)


def json_schema() -> dict:
    """The JSON Schema of ``manifest.json`` (written to enclave/schema by `make schema`)."""
    schema = Manifest.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://enclave.invalid/schema/manifest-v{SCHEMA_VERSION}.json",
        **schema,
    }


def sha256_file(path: Path, follow_symlinks: bool = True) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (a progress bar above 64 MiB).

    Args:
        path: the file.
        follow_symlinks: when False, a symbolic link is refused (``OSError``) instead of hashing its target.
    """
    h = hashlib.sha256()
    flags = os.O_RDONLY | (0 if follow_symlinks else os.O_NOFOLLOW)
    with os.fdopen(os.open(path, flags), "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        bar = None
        if size >= _PROGRESS_BYTES:
            from tqdm import tqdm

            bar = tqdm(
                total=size, unit="B", unit_scale=True, desc=f"sha256 {Path(path).name}", leave=False, disable=None
            )
        while block := fh.read(1 << 20):
            h.update(block)
            if bar is not None:
                bar.update(len(block))
    if bar is not None:
        bar.close()
    return h.hexdigest()


def content_digest(files: list[FileEntry]) -> str:
    """The artifact's identity: sha256 over its sorted (path, size, sha256) list."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.size}\0{f.sha256}\n".encode())
    return "sha256:" + h.hexdigest()


def _walk(root: Path) -> Iterator[Path]:
    """Every file under ``root``, and every symbolic link to a directory (which os.walk does not enter)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in sorted(filenames + links):
            yield Path(dirpath, name)


def unsafe_path(name: str) -> str | None:
    """Why ``name`` is not a safe relative POSIX path (absolute, '..', odd characters), or None when it is.

    Args:
        name: a path from a manifest or a tar member name.

    Returns:
        A reason to put in an error message, or None.
    """
    if not name or name.startswith("/") or "\\" in name or "\x00" in name or (len(name) > 1 and name[1] == ":"):
        return "an absolute or non-POSIX path"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts) or posixpath.normpath(name) != name:
        return "a path with '..', '.' or empty parts (path traversal)"
    return None


def scan_files(root: Path) -> list[FileEntry]:
    """Hash every file under ``root`` except ``manifest.json``.

    Raises:
        EnclaveError: a symbolic link (artifacts hold plain files only).
    """
    entries = []
    for path in _walk(root):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        if path.is_symlink():
            raise EnclaveError(f"{path} is a symbolic link", fix="artifacts hold plain files only")
        entries.append(FileEntry(path=rel, size=path.lstat().st_size, sha256=sha256_file(path, follow_symlinks=False)))
    return sorted(entries, key=lambda e: e.path)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Draft:
    """An artifact being written: fill ``path``, set ``settings`` and ``metrics``."""

    def __init__(self, path: Path, kind: str, name: str, parents: list[Parent], settings: dict) -> None:
        self.path = path
        self.kind = kind
        self.name = name
        self.parents = list(parents)
        self.settings = dict(settings)
        self.metrics: dict[str, Any] = {}
        self.manifest: Manifest | None = None

    def seal(self) -> Manifest:
        """Hash every file under ``path`` and write ``manifest.json`` there; ``create_artifact`` calls it.

        Returns:
            The manifest written, also kept in ``self.manifest``.

        Raises:
            EnclaveError: a symbolic link under ``path`` (artifacts hold plain files only).
        """
        files = scan_files(self.path)
        manifest = Manifest(
            kind=self.kind,
            name=self.name,
            enclave_version=__version__,
            created_at=_now(),
            digest=content_digest(files),
            parents=self.parents,
            settings=self.settings,
            metrics=self.metrics,
            files=files,
        )
        (self.path / MANIFEST).write_bytes(manifest.to_json())
        self.manifest = manifest
        return manifest


@contextlib.contextmanager
def create_artifact(
    final: Path,
    kind: ArtifactKind,
    name: str,
    parents: list[Parent] | None = None,
    settings: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Iterator[Draft]:
    """Write an artifact atomically: nothing appears under ``final`` unless all succeeded.

    Args:
        final: the artifact directory to create.
        kind: the artifact kind recorded in the manifest.
        name: a human name (model name, adapter name).
        parents: lineage entries (``Manifest.as_parent``).
        settings: the settings that produced the artifact.
        overwrite: replace an existing artifact at ``final``.

    Yields:
        A ``Draft`` whose ``path`` is a temporary directory to fill.
    """
    try:
        with atomic_dir(Path(final), overwrite=overwrite) as tmp:
            draft = Draft(tmp, kind, name, parents or [], settings or {})
            yield draft
            draft.seal()
    except FileExistsError as exc:
        raise EnclaveError(f"{final} already exists", fix="choose another output path, or pass --overwrite") from exc


def read_manifest(root: Path) -> Manifest:
    """Parse and validate ``root/manifest.json``.

    Raises:
        IntegrityError: missing, not JSON, or not a valid manifest (the reason named).
    """
    path = Path(root) / MANIFEST
    if path.is_symlink():
        raise IntegrityError(str(root), [f"{MANIFEST}: refused: a symbolic link (artifacts hold plain files only)"])
    if not path.is_file():
        raise IntegrityError(str(root), [f"{MANIFEST}: missing (not an Enclave artifact)"])
    try:
        return Manifest.model_validate(json.loads(path.read_bytes()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(str(root), [f"{MANIFEST}: not valid JSON ({exc})"]) from exc
    except ValidationError as exc:
        problems = [f"{MANIFEST}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise IntegrityError(str(root), problems) from exc


def verify(root: Path) -> tuple[Manifest, list[str]]:
    """Check every file of an artifact against its manifest.

    A file entry is only read when it is a safe relative path to a regular file inside ``root``
    with no symbolic link on the way; otherwise it is refused, so a crafted manifest cannot make
    verification read (or report the size of) a file outside the artifact.

    Returns:
        The manifest and one line per problem: a file that differs, is missing, is not listed,
        or an entry that is refused (absolute, '..', a symbolic link, outside the directory).

    Raises:
        IntegrityError: the manifest itself cannot be read.
    """
    root = Path(root)
    manifest = read_manifest(root)
    problems = [p for entry in manifest.files if (p := _check_entry(root, entry))]
    listed = {f.path for f in manifest.files}
    for path in _walk(root):
        rel = path.relative_to(root).as_posix()
        if rel != MANIFEST and rel not in listed:
            link = "a symbolic link, " if path.is_symlink() else ""
            problems.append(f"{rel}: {link}not listed in the manifest")
    if content_digest(list(manifest.files)) != manifest.digest:
        problems.append(f"{MANIFEST}: digest does not match its file list (manifest edited)")
    return manifest, problems


def _check_entry(root: Path, entry: FileEntry) -> str | None:
    """The problem with one file entry, or None when the file matches it."""
    refused = _refuse_entry(root, entry.path)
    if refused:
        return f"{entry.path!r}: refused: {refused}"
    path = root / entry.path
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return f"{entry.path}: missing"
    if not stat.S_ISREG(st.st_mode):
        return f"{entry.path!r}: refused: not a regular file"
    if st.st_size != entry.size:
        return f"{entry.path}: size {st.st_size}, manifest says {entry.size}"
    try:
        digest = sha256_file(path, follow_symlinks=False)
    except OSError as exc:
        return f"{entry.path}: could not be read ({exc.strerror})"
    return None if digest == entry.sha256 else f"{entry.path}: sha256 differs from the manifest (file changed)"


def _refuse_entry(root: Path, rel: str) -> str | None:
    """Why a manifest's file entry may not be opened under ``root``, or None."""
    unsafe = unsafe_path(rel)
    if unsafe:
        return f"{unsafe}; entries are relative paths inside the artifact"
    path = root
    for part in rel.split("/"):
        path = path / part
        if path.is_symlink():
            return f"{path.relative_to(root).as_posix()} is a symbolic link (artifacts hold plain files only)"
    if not (root / rel).resolve().is_relative_to(root.resolve()):
        return "it resolves outside the artifact directory"
    return None


def require_valid(root: Path) -> Manifest:
    """``verify`` and raise ``IntegrityError`` naming every bad file."""
    manifest, problems = verify(root)
    if problems:
        raise IntegrityError(str(root), problems)
    return manifest


def update_metrics(root: Path, metrics: dict[str, Any]) -> Manifest:
    """Merge ``metrics`` into an artifact's manifest (atomic rewrite of manifest.json)."""
    manifest = read_manifest(root)
    merged = manifest.model_copy(update={"metrics": {**manifest.metrics, **metrics}})
    atomic_write_bytes(Path(root) / MANIFEST, Manifest.model_validate(merged.model_dump()).to_json())
    return merged
