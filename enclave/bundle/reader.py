"""Check a bundle in one pass: the signature over bundle.json, then every tar entry against it.

Nothing is trusted before the signature checks. Entries are read at most up to their declared
size; with ``extract_to`` the checked bytes are written there as they are hashed, so a bundle is
read once whether it is verified or installed. Every problem is collected, file by file.

With ``extract_to`` nothing is written until the signature over ``bundle.json`` (the first two tar
members) has checked against a trusted key and the filesystem has room for every declared byte: an
unsigned bundle, or one that would fill the volume, leaves no byte behind.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import posixpath
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from enclave.bundle import keys
from enclave.bundle.layout import MANIFEST_NAME, SIGNATURE_NAME, BundleManifest, parse_manifest
from enclave.errors import EnclaveError
from enclave.manifest import unsafe_path

_MAX_META = 16 << 20
_BLOCK = 1 << 20
_SPACE_MARGIN = 64 << 20
"""Room kept free beyond the declared sizes (plus 1% for filesystem blocks), for what else writes to that volume."""


@dataclass
class Report:
    """What reading a bundle found."""

    path: Path
    manifest: BundleManifest | None = None
    signed_by: str | None = None
    """The trusted key id the signature checked against; None when it did not."""
    problems: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        """True when the manifest was read, the signature checked against a trusted key, and nothing failed."""
        return not self.problems and self.manifest is not None and self.signed_by is not None


def read_bundle(path: Path, trusted: dict[str, object], extract_to: Path | None = None) -> Report:
    """Check (and optionally unpack) the bundle at ``path`` against the ``trusted`` public keys."""
    report = Report(Path(path))
    if not report.path.is_file():
        raise EnclaveError(f"{path}: no such bundle file", fix="pass the .tar made by `enclave bundle create`")
    try:
        with tarfile.open(report.path, "r|*") as tar:
            _read(tar, report, trusted, extract_to)
    except (tarfile.TarError, EOFError, OSError) as exc:
        report.problems.append(f"the tar file is truncated or damaged ({exc}); nothing after this point was read")
    return report


def _read(tar: tarfile.TarFile, report: Report, trusted: dict[str, object], extract_to: Path | None) -> None:
    members = iter(tar)
    meta = _metadata(tar, members, report)
    if meta is None:
        return
    data, signature, unread = meta
    if unread is not None:  # no signature: the second entry is an ordinary one, checked below
        members = itertools.chain([unread], members)
    _check_signature(data, signature, trusted, report)
    try:
        report.manifest = parse_manifest(data)
    except EnclaveError as exc:
        report.problems.append(str(exc))
        return
    if extract_to is not None:
        if report.signed_by is None:
            report.problems.append(
                "nothing was unpacked: a bundle is written to disk only once its signature checks "
                "(`enclave bundle verify` checks its files one by one)"
            )
            return
        check_space(report.manifest, Path(extract_to))
    _check_members(tar, members, report, extract_to)


def check_space(manifest: BundleManifest, extract_to: Path) -> None:
    """Refuse to unpack when the declared sizes (plus a margin) exceed the free space where they would go.

    Args:
        manifest: the signed bundle.json; members larger than it declares are refused unread.
        extract_to: the (existing) staging directory.

    Raises:
        EnclaveError: the bytes needed and the bytes free, before anything is written.
    """
    declared = sum(f.size for f in manifest.files)
    needed = declared + declared // 100 + _SPACE_MARGIN
    free = shutil.disk_usage(extract_to).free
    if needed > free:
        raise EnclaveError(
            f"not enough space to unpack the bundle: it needs {needed:,} bytes ({declared:,} declared plus a margin) "
            f"on the filesystem of {extract_to}, which has {free:,} bytes free; nothing was written",
            fix="free space on that volume, or install into a repository on a larger one (--repo)",
        )


def _metadata(
    tar: tarfile.TarFile, members, report: Report
) -> tuple[bytes, dict | None, tarfile.TarInfo | None] | None:
    """bundle.json's bytes, the parsed signature (None when absent or unreadable), and an entry read past."""
    first = next(members, None)
    if first is None or first.name != MANIFEST_NAME or not first.isreg() or first.size > _MAX_META:
        report.problems.append(
            f"{MANIFEST_NAME} is not the first entry: not an Enclave bundle (made by `enclave bundle create`)"
        )
        return None
    data = tar.extractfile(first).read()
    second = next(members, None)
    if second is None or second.name != SIGNATURE_NAME or not second.isreg() or second.size > 4096:
        report.problems.append(f"{SIGNATURE_NAME}: missing, the bundle is unsigned; only signed bundles are installed")
        return data, None, second
    try:
        return data, json.loads(tar.extractfile(second).read()), None
    except ValueError:
        report.problems.append(f"{SIGNATURE_NAME}: not JSON; the signature cannot be read")
        return data, None, None


def _check_signature(data: bytes, signature: dict | None, trusted: dict[str, object], report: Report) -> None:
    if signature is None:
        return
    kid = signature.get("key_id") if isinstance(signature, dict) else None
    if kid not in trusted:
        report.problems.append(
            f"{SIGNATURE_NAME}: signed by key {kid}, which is not a trusted key "
            f"(trusted: {', '.join(sorted(trusted))}); pass the creator's public key with --key"
        )
    elif not keys.check(trusted[kid], data, signature):
        report.problems.append(
            f"{SIGNATURE_NAME}: the signature does not match {MANIFEST_NAME}: it was changed after signing"
        )
    else:
        report.signed_by = kid


def _check_members(tar: tarfile.TarFile, members, report: Report, extract_to: Path | None) -> None:
    from tqdm import tqdm

    declared = {f.path: f for f in report.manifest.files}
    seen: set[str] = set()
    total = sum(f.size for f in report.manifest.files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="checking bundle", disable=None, leave=False) as bar:
        for member in members:
            name = member.name
            why = _refuse(member, declared, seen)
            if why:
                report.problems.append(f"{name}: {why}")
                seen.add(name) if name in declared else None
                continue
            seen.add(name)
            if member.isdir():
                continue
            digest = _copy(tar, member, extract_to, bar)
            report.checked += 1
            if digest != declared[name].sha256:
                report.problems.append(
                    f"{name}: sha256 differs from {MANIFEST_NAME} (the file was changed after signing)"
                )
    for missing in sorted(set(declared) - seen):
        report.problems.append(f"{missing}: listed in {MANIFEST_NAME} but missing from the bundle")


def _refuse(member: tarfile.TarInfo, declared: dict, seen: set[str]) -> str | None:
    """Why an entry is refused before any of its bytes are read, or None."""
    name = member.name
    unsafe = unsafe_path(name)
    if unsafe:
        return f"refused: {unsafe}"
    if member.issym() or member.islnk():
        base = posixpath.dirname(name) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, member.linkname))
        leaves = member.linkname.startswith("/") or target == ".." or target.startswith("../")
        where = "which leaves the bundle" if leaves else "bundles hold regular files only"
        return f"refused: a link to {member.linkname!r}, {where}"
    if member.isdir():
        return None if any(p.startswith(name + "/") for p in declared) else "refused: a directory not in bundle.json"
    if not member.isreg():
        return "refused: a device, fifo or other special file"
    if name in seen:
        return "refused: appears twice in the tar"
    if name not in declared:
        return f"refused: not listed in {MANIFEST_NAME} (an extra file)"
    if member.size > declared[name].size:
        return f"refused: larger than declared ({member.size} > {declared[name].size} bytes)"
    if member.size < declared[name].size:
        return f"smaller than declared ({member.size} < {declared[name].size} bytes): truncated"
    return None


def _copy(tar: tarfile.TarFile, member: tarfile.TarInfo, extract_to: Path | None, bar) -> str:
    h = hashlib.sha256()
    src = tar.extractfile(member)
    out = None
    if extract_to is not None:
        dest = Path(extract_to, *member.name.split("/"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        out = os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb")
    try:
        left = member.size
        while left > 0:
            block = src.read(min(_BLOCK, left))
            if not block:
                raise EOFError(f"{member.name} ends early")
            h.update(block)
            if out is not None:
                out.write(block)
            left -= len(block)
            bar.update(len(block))
    finally:
        if out is not None:
            out.close()
    return h.hexdigest()
