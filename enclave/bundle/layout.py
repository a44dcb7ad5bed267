"""What a bundle holds: ``bundle.json`` (signed by ``bundle.sig``), then the files it lists.

Tar layout, in this order::

    bundle.json                      the manifest below
    bundle.sig                       {"algorithm": "ed25519", "key_id": ..., "signature": base64}
    models/NAME/VERSION/...          model artifacts, laid out as in a serve repository
    adapters/NAME/...                adapter artifacts
    wheels/*.whl, wheels/requirements.txt   optional: enclave-llm[serve] and its dependencies, pinned by hash

The signature covers the exact bytes of ``bundle.json``; ``bundle.json`` gives every other file's
size and sha256, so one signature vouches for every byte.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from enclave.errors import EnclaveError
from enclave.manifest import FileEntry, Parent
from enclave.store import safe_name

SCHEMA_VERSION = 1
MANIFEST_NAME = "bundle.json"
SIGNATURE_NAME = "bundle.sig"
WHEELS_DIR = "wheels"
REQUIREMENTS = f"{WHEELS_DIR}/requirements.txt"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BundledArtifact(_Strict):
    """One artifact in the bundle and where it goes in the repository."""

    role: Literal["model", "adapter"]
    name: str
    version: str | None = None
    """The model version it installs as (models only)."""
    kind: str
    digest: str
    """The artifact manifest's content digest."""
    path: str
    """Its directory inside the bundle: models/NAME/VERSION or adapters/NAME."""
    parents: list[Parent] = []
    """Lineage, copied from the artifact's manifest."""
    created_at: str


class Wheels(_Strict):
    """The Python wheels a bundle carries, and the interpreter and platform they were downloaded for."""

    requirement: str
    """What they install, e.g. enclave-llm[serve]==0.1.0."""
    python_version: str
    platform: str
    count: int


class BundleManifest(_Strict):
    """``bundle.json``: who made the bundle and with which key, its artifacts, its wheels, and every file's hash."""

    schema_version: Literal[1] = SCHEMA_VERSION
    enclave_version: str
    created_at: str
    creator: str
    key_id: str
    artifacts: list[BundledArtifact]
    wheels: Wheels | None = None
    files: list[FileEntry]
    """Every member of the tar except bundle.json and bundle.sig."""

    def to_json(self) -> bytes:
        """The manifest as indented JSON bytes with a final newline (the exact bytes that are signed)."""
        return (json.dumps(self.model_dump(), indent=2) + "\n").encode()


def parse_manifest(data: bytes) -> BundleManifest:
    """Parse bundle.json, refusing other schema versions with a message that says which Enclave reads them."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise EnclaveError(
            f"{MANIFEST_NAME} is not JSON ({exc})", fix="recreate the bundle with `enclave bundle create`"
        ) from exc
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise EnclaveError(
            f"bundle schema_version {version!r} is not one this Enclave reads ({SCHEMA_VERSION}); "
            f"it was made by Enclave {raw.get('enclave_version', '?') if isinstance(raw, dict) else '?'}",
            fix="install it with the Enclave version that made it, or recreate the bundle with this one",
        )
    try:
        manifest = BundleManifest.model_validate(raw)
    except ValidationError as exc:
        raise EnclaveError(
            f"{MANIFEST_NAME} does not match the bundle schema: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}",
            fix="recreate the bundle with `enclave bundle create`",
        ) from exc
    for i, art in enumerate(manifest.artifacts):
        check_destination(art, f"{MANIFEST_NAME} artifacts[{i}]")
    return manifest


def check_destination(art: BundledArtifact, where: str) -> None:
    """Refuse an artifact whose name or version is not one safe directory name, or whose ``path`` is not
    the one they give (models/NAME/VERSION, adapters/NAME): install turns them into repository paths.

    Raises:
        EnclaveError: naming the field, the value and where it was read.
    """
    safe_name(art.name, f"{where}.name")
    if art.role == "model":
        safe_name(art.version, f"{where}.version")
    elif art.version is not None:
        raise EnclaveError(
            f"{where}.version {art.version!r}: an adapter has no version",
            fix="recreate the bundle with `enclave bundle create`",
        )
    expected = f"models/{art.name}/{art.version}" if art.role == "model" else f"adapters/{art.name}"
    if art.path != expected:
        raise EnclaveError(
            f"{where}.path {art.path!r} is not where the {art.role} {art.name!r} goes ({expected!r})",
            fix="recreate the bundle with `enclave bundle create`",
        )
