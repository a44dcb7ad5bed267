"""The model repository `enclave serve` runs from: versions of models, adapters, and which version is active.

Layout::

    REPO/models/NAME/VERSION/     an artifact (onnx, vllm, or an HF checkpoint) with its manifest
    REPO/models/NAME/active.json  {"active": VERSION, "previous": [older active versions, newest first]}
    REPO/adapters/NAME/           adapter artifacts from `enclave tune`

``active.json`` is replaced atomically (write a temporary file, then rename), so a server that
reads it sees the old or the new version, never a mix; `rollback` pops ``previous``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from enclave.atomic import atomic_dir, atomic_write_bytes
from enclave.errors import EnclaveError
from enclave.manifest import MANIFEST, Manifest, read_manifest, require_valid
from enclave.store import check_name

ACTIVE = "active.json"
SERVABLE_KINDS = ("onnx", "vllm", "base_model", "merged", "pruned", "distilled", "quantized")


@dataclass(frozen=True)
class Version:
    """One version of a model in the repository."""

    model: str
    version: str
    path: Path
    manifest: Manifest
    active: bool


class Repository:
    """Read and change a model repository directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.root / "adapters"

    def models(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if (p / ACTIVE).is_file())

    def state(self, model: str) -> dict:
        path = self.models_dir / model / ACTIVE
        if not path.is_file():
            raise EnclaveError(f"unknown model {model!r}; the repository {self.root} has: {', '.join(self.models()) or 'none'}",
                               fix="add one with `enclave serve add`")  # fmt: skip
        return json.loads(path.read_text())

    def versions(self, model: str) -> list[Version]:
        active = self.state(model)["active"]
        root = self.models_dir / model
        out = []
        for p in sorted(root.iterdir()):
            if p.is_dir() and (p / MANIFEST).is_file():
                out.append(Version(model, p.name, p, read_manifest(p), p.name == active))
        return out

    def active(self, model: str) -> Version:
        name = self.state(model)["active"]
        return next(v for v in self.versions(model) if v.version == name)

    def version(self, model: str, version: str | None) -> Version:
        """A version by label, or the active one; NOT_FOUND-style errors list what exists."""
        if not version:
            return self.active(model)
        for v in self.versions(model):
            if v.version == version:
                return v
        known = ", ".join(v.version for v in self.versions(model))
        raise EnclaveError(f"model {model!r} has no version {version!r}; it has: {known}", fix="use one of those, or none for the active one")

    def add(self, artifact: Path, model: str, version: str, activate: bool = True) -> Version:
        """Copy a verified artifact in as MODEL/VERSION (atomically), and make it active unless told not to."""
        check_name(model, "model")
        check_name(version, "version")
        manifest = require_valid(Path(artifact))
        if manifest.kind not in SERVABLE_KINDS:
            raise EnclaveError(f"{artifact} is a {manifest.kind} artifact, which the server does not run",
                               fix=f"add one of: {', '.join(SERVABLE_KINDS)} (adapters: `enclave serve add-adapter`)")  # fmt: skip
        final = self.models_dir / model / version
        with atomic_dir(final) as tmp:
            shutil.copytree(artifact, tmp, dirs_exist_ok=True)
        require_valid(final)
        return self._register(model, version, activate)

    def place(self, staged: Path, model: str, version: str, activate: bool = True) -> Version:
        """Move a verified directory (on the repository's filesystem) in as MODEL/VERSION with one rename."""
        check_name(model, "model")
        check_name(version, "version")
        final = self.models_dir / model / version
        if final.exists():
            raise EnclaveError(f"{model} version {version} is already in {self.root}", fix="install it under another version")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, final)
        return self._register(model, version, activate)

    def _register(self, model: str, version: str, activate: bool) -> Version:
        if not (self.models_dir / model / ACTIVE).is_file():
            self._write_state(model, {"active": version, "previous": []})
        elif activate:
            self.activate(model, version)
        return self.version(model, version)

    def add_adapter(self, artifact: Path) -> Manifest:
        manifest = require_valid(Path(artifact))
        if manifest.kind != "adapter":
            raise EnclaveError(f"{artifact} is a {manifest.kind} artifact, not an adapter", fix="pass a directory made by `enclave tune`")
        with atomic_dir(self.adapters_dir / manifest.name) as tmp:
            shutil.copytree(artifact, tmp, dirs_exist_ok=True)
        return manifest

    def place_adapter(self, staged: Path, name: str) -> None:
        """Move a verified adapter directory in as adapters/NAME with one rename (a new name only)."""
        check_name(name, "adapter")
        final = self.adapters_dir / name
        if final.exists():
            raise EnclaveError(f"adapter {name!r} is already in {self.root}", fix="install it under another name")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, final)

    def adapter(self, name: str) -> Path:
        """A verified adapter directory by name (no paths: names only)."""
        check_name(name, "adapter")
        path = self.adapters_dir / name
        if not (path / MANIFEST).is_file():
            known = sorted(p.name for p in self.adapters_dir.iterdir()) if self.adapters_dir.is_dir() else []
            raise EnclaveError(f"no adapter {name!r} in {self.adapters_dir}; there are: {', '.join(known) or 'none'}",
                               fix="add it with `enclave serve add-adapter`")  # fmt: skip
        require_valid(path)
        return path

    def activate(self, model: str, version: str) -> None:
        state = self.state(model)
        self.version(model, version)  # must exist
        if state["active"] == version:
            return
        self._write_state(model, {"active": version, "previous": [state["active"], *state["previous"]][:20]})

    def rollback(self, model: str) -> str:
        """Make the previously active version active again; returns it."""
        state = self.state(model)
        if not state["previous"]:
            raise EnclaveError(f"model {model!r} has no earlier active version to roll back to", fix="activate a version by name")
        back, rest = state["previous"][0], state["previous"][1:]
        self._write_state(model, {"active": back, "previous": rest})
        return back

    def _write_state(self, model: str, state: dict) -> None:
        atomic_write_bytes(self.models_dir / model / ACTIVE, (json.dumps(state, indent=2) + "\n").encode())
