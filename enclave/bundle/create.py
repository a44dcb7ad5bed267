"""`enclave bundle create`: artifacts (and optionally wheels) into one signed tar file.

The tar is written to a temporary name and renamed when complete. Every file is hashed twice:
when the artifact is verified before bundling, and again as it is written, so a file that changes
while the bundle is made is an error rather than a bundle that fails later on the target.
"""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import os
import socket
import tarfile
from dataclasses import dataclass
from pathlib import Path

from enclave import __version__
from enclave.atomic import temp_sibling
from enclave.bundle import keys
from enclave.bundle.layout import MANIFEST_NAME, SIGNATURE_NAME, BundledArtifact, BundleManifest, Wheels
from enclave.errors import EnclaveError
from enclave.manifest import MANIFEST, FileEntry, _now, require_valid, sha256_file
from enclave.store import check_name


@dataclass(frozen=True)
class Source:
    """One file to put in the bundle: where it is on disk and its name in the tar."""

    disk: Path
    entry: FileEntry


def artifact_sources(path: Path, role: str, name: str, version: str | None) -> tuple[BundledArtifact, list[Source]]:
    """Verify an artifact directory and list its files under models/NAME/VERSION or adapters/NAME."""
    path = Path(path).expanduser()
    manifest = require_valid(path)
    if role == "adapter":
        check_name(name, "adapter name")
        prefix = f"adapters/{name}"
    else:
        check_name(name, "model name")
        check_name(version, "version")
        prefix = f"models/{name}/{version}"
    sources = [
        Source(path / f.path, FileEntry(path=f"{prefix}/{f.path}", size=f.size, sha256=f.sha256))
        for f in manifest.files
    ]
    man = path / MANIFEST
    sources.append(
        Source(man, FileEntry(path=f"{prefix}/{MANIFEST}", size=man.stat().st_size, sha256=sha256_file(man)))
    )
    art = BundledArtifact(
        role=role,
        name=name,
        version=version,
        kind=manifest.kind,
        digest=manifest.digest,
        path=prefix,
        parents=manifest.parents,
        created_at=manifest.created_at,
    )
    return art, sources


def model_spec(spec: str) -> tuple[str, str, Path]:
    """Read a ``--model`` value, ``[NAME[@VERSION]=]PATH``, as (name, version, path).

    Args:
        spec: the value as the user typed it; NAME defaults to the directory's name, VERSION to 1.

    Returns:
        The model's name in the bundle, its version label and the artifact directory.

    Raises:
        EnclaveError: PATH is not a directory.
    """
    label, sep, path = spec.partition("=")
    if not sep:
        label, path = "", spec
    name, _, version = label.partition("@")
    path_ = Path(path).expanduser()
    name = name or path_.name
    if not path_.is_dir():
        raise EnclaveError(
            f"--model {spec}: {path_} is not a directory", fix="pass [NAME[@VERSION]=]PATH to an artifact directory"
        )
    return name, version or "1", path_


def repository_sources(root: Path) -> list[tuple[BundledArtifact, list[Source]]]:
    """Every model's active version and every adapter of a serve repository, ready to bundle.

    Args:
        root: the repository directory (``enclave serve add`` made it).

    Returns:
        One (artifact, files) pair per model and adapter.
    """
    from enclave.repository import Repository

    repo = Repository(root)
    parts = [artifact_sources(v.path, "model", m, v.version) for m in repo.models() for v in [repo.active(m)]]
    if repo.adapters_dir.is_dir():
        parts += [
            artifact_sources(p, "adapter", p.name, None) for p in sorted(repo.adapters_dir.iterdir()) if p.is_dir()
        ]
    return parts


def wheel_sources(folder: Path) -> list[Source]:
    """Every file in ``folder`` (wheels and requirements.txt), in name order, hashed, under wheels/ in the tar."""
    return [
        Source(p, FileEntry(path=f"wheels/{p.name}", size=p.stat().st_size, sha256=sha256_file(p)))
        for p in sorted(folder.iterdir())
    ]


def write_bundle(
    out: Path,
    private,
    artifacts: list[BundledArtifact],
    sources: list[Source],
    wheels: Wheels | None,
    creator: str | None = None,
) -> BundleManifest:
    """Write the signed tar at ``out`` (atomically); returns its manifest."""
    names = [s.entry.path for s in sources]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise EnclaveError(
            f"two artifacts would land at the same place in the bundle: {', '.join(dup[:3])}",
            fix="give each model a distinct NAME@VERSION (or each adapter a distinct name)",
        )
    manifest = BundleManifest(
        enclave_version=__version__,
        created_at=_now(),
        creator=creator or _creator(),
        key_id=keys.key_id(private.public_key()),
        artifacts=artifacts,
        wheels=wheels,
        files=sorted((s.entry for s in sources), key=lambda e: e.path),
    )
    data = manifest.to_json()
    signature = (json.dumps(keys.sign(private, data)) + "\n").encode()
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, MANIFEST_NAME, data)
            _add_bytes(tar, SIGNATURE_NAME, signature)
            _add_files(tar, sorted(sources, key=lambda s: s.entry.path))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0o644, 0, 0, 0, "", ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


class _Hashing(io.RawIOBase):
    def __init__(self, fh, bar) -> None:
        self.fh, self.bar, self.h = fh, bar, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        block = self.fh.read(n)
        self.h.update(block)
        self.bar.update(len(block))
        return block


def _add_files(tar: tarfile.TarFile, sources: list[Source]) -> None:
    from tqdm import tqdm

    with tqdm(
        total=sum(s.entry.size for s in sources), unit="B", unit_scale=True, desc="writing bundle", disable=None
    ) as bar:
        for s in sources:
            with open(s.disk, "rb") as fh:
                reader = _Hashing(fh, bar)
                tar.addfile(_info(s.entry.path, s.entry.size), reader)
            if reader.h.hexdigest() != s.entry.sha256 or s.disk.stat().st_size != s.entry.size:
                raise EnclaveError(
                    f"{s.disk} changed while the bundle was written",
                    fix="wait for whatever writes it to finish, then run create again",
                )


def _creator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
