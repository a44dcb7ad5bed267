"""`enclave bundle install`: check, unpack into a staging folder inside the repository, then move
each artifact into place with one rename; wheels go in with pip and no index.

A bundle with any problem installs nothing: the staging folder is removed and the repository is
as it was. Nothing is unpacked at all unless the signature checks and the volume has room for every
declared byte (the reader refuses before writing). Artifacts already present with the same digest
are skipped (installing twice is safe); a different artifact under the same model version or
adapter name is refused before anything moves.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from enclave.bundle import wheels as wheel_files
from enclave.bundle.layout import WHEELS_DIR, BundledArtifact, BundleManifest
from enclave.bundle.reader import Report, read_bundle
from enclave.errors import EnclaveError, IntegrityError
from enclave.manifest import MANIFEST, content_digest, read_manifest

STAGING = ".bundle-incoming-"


class BundleRefused(EnclaveError):
    """A bundle that failed its checks; nothing was installed."""

    def __init__(self, report: Report) -> None:
        self.report = report
        lines = "\n".join(f"  - {p}" for p in report.problems)
        super().__init__(
            f"bundle {report.path} refused, nothing was installed ({len(report.problems)} problems):\n{lines}",
            fix="get the bundle again from its creator, and check you pass their public key with --key",
        )


@dataclass
class Installed:
    """What an install did.

    Attributes:
        placed: the artifacts moved into the repository ("model NAME version VERSION", "adapter NAME").
        skipped: the artifacts already there with the same digest, left as they were.
        wheels: how many wheels were installed (0 when none were).
    """

    placed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    wheels: int = 0


def install_bundle(
    path: Path,
    trusted: dict[str, object],
    repo_root: Path,
    activate: bool = False,
    wheels: bool = True,
    python: str | None = None,
) -> tuple[Report, Installed]:
    """Verify the bundle at ``path`` and install it into the repository at ``repo_root``."""
    from enclave.repository import Repository

    repo = Repository(Path(repo_root).expanduser())
    repo.root.mkdir(parents=True, exist_ok=True)
    with _exclusive(repo.root):
        for stale in repo.root.glob(f"{STAGING}*"):  # left by an install that was killed
            shutil.rmtree(stale, ignore_errors=True)
        return _install(repo, path, trusted, activate, wheels, python or sys.executable)


@contextlib.contextmanager
def _exclusive(root: Path):
    """One install at a time per repository (an flock held for the whole install)."""
    with open(root / ".bundle-install.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EnclaveError(
                f"another `enclave bundle install` is running on {root}",
                fix="wait for it to finish, then run this one again",
            ) from None
        yield


def _install(
    repo, path: Path, trusted: dict[str, object], activate: bool, wheels: bool, python: str
) -> tuple[Report, Installed]:
    staging = repo.root / f"{STAGING}{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        report = read_bundle(path, trusted, extract_to=staging)
        if not report.ok:
            raise BundleRefused(report)
        todo, done = _plan(repo, staging, report.manifest)
        if wheels and report.manifest.wheels is not None:
            wheel_files.install(staging / WHEELS_DIR, python)
            done.wheels = report.manifest.wheels.count
        for art in todo:
            _place(repo, staging, art, activate)
            done.placed.append(_label(art))
        return report, done
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _label(art: BundledArtifact) -> str:
    return f"model {art.name} version {art.version}" if art.role == "model" else f"adapter {art.name}"


def _final(repo, art: BundledArtifact) -> Path:
    return repo.models_dir / art.name / art.version if art.role == "model" else repo.adapters_dir / art.name


def _check_artifact(staging: Path, art: BundledArtifact, bundle: BundleManifest) -> None:
    """The unpacked artifact's manifest lists exactly the files bundle.json lists under it, with the same
    sizes and hashes (the reader has just hashed those, so nothing is read twice), and its digest."""
    manifest = read_manifest(staging / art.path)
    listed = {
        (f.path, f.size, f.sha256)
        for f in bundle.files
        if f.path.startswith(art.path + "/") and f.path != f"{art.path}/{MANIFEST}"
    }
    own = {(f"{art.path}/{f.path}", f.size, f.sha256) for f in manifest.files}
    if own != listed or content_digest(list(manifest.files)) != manifest.digest:
        raise IntegrityError(
            str(staging / art.path),
            [f"{art.path}: its manifest.json does not match the files bundle.json lists for it"],
        )
    if manifest.digest != art.digest:
        raise EnclaveError(
            f"{art.path}: its manifest digest {manifest.digest[:19]} "
            f"is not the one bundle.json lists ({art.digest[:19]})",
            fix="recreate the bundle",
        )


def _plan(repo, staging: Path, bundle: BundleManifest) -> tuple[list[BundledArtifact], Installed]:
    """Check every unpacked artifact and every destination before anything moves."""
    todo, done = [], Installed()
    for art in bundle.artifacts:
        _check_artifact(staging, art, bundle)
        final = _final(repo, art)
        if (final / MANIFEST).is_file():
            if read_manifest(final).digest == art.digest:
                done.skipped.append(_label(art))
                continue
            raise EnclaveError(
                f"{_label(art)} is already in {repo.root} with different contents ({final})",
                fix="install the bundle into another repository, or recreate it with another version label",
            )
        todo.append(art)
    return todo, done


def _place(repo, staging: Path, art: BundledArtifact, activate: bool) -> None:
    if art.role == "model":
        repo.place(staging / art.path, art.name, art.version, activate=activate)
    else:
        repo.place_adapter(staging / art.path, art.name)
