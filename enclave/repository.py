"""The model repository `enclave serve` runs from: versions of models, adapters, and which version is active.

Layout::

    REPO/models/NAME/VERSION/      an artifact (onnx, vllm, or an HF checkpoint) with its manifest
    REPO/models/NAME/active.json   {"active": VERSION, "digest": PIN, "previous": [{"version": V, "digest": PIN}, ...]}
    REPO/adapters/NAME/            adapter artifacts from `enclave tune`
    REPO/adapters/NAME@VERSION/    versions of an adapter (`enclave serve add-adapter --version`)
    REPO/adapter-pins/NAME.json    {"adapter": NAME, "digest": PIN}, written when the adapter is added
                                   (NAME@VERSION.json for a version)
    REPO/adapter-releases/NAME.json  {"active": VERSION, "canary": {"version", "share"} | null,
                                   "previous": [VERSION, ...]}: which version answers requests for NAME

``active.json`` is replaced atomically (write a temporary file, then rename), so a server that
reads it sees the old or the new version, never a mix; `rollback` pops ``previous``.

A pin is the manifest digest of what the operator added or activated. Verification alone passes a
manifest rewritten consistently (files changed and their hashes updated); the pin does not, so
every load (`verified`, `adapter`) checks both. ``active.json`` files written before pins existed
(``previous`` a list of labels, no ``digest``) are read as unpinned and upgraded on the next write.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from enclave.atomic import atomic_dir, atomic_write_bytes
from enclave.errors import EnclaveError, IntegrityError
from enclave.manifest import MANIFEST, Manifest, read_manifest, require_valid
from enclave.store import check_name

ACTIVE = "active.json"
PINS = "adapter-pins"
RELEASES = "adapter-releases"
SERVABLE_KINDS = ("onnx", "vllm", "base_model", "merged", "pruned", "distilled", "quantized")
log = logging.getLogger("enclave.serve")


class PinMismatch(IntegrityError):
    """A manifest whose digest is not the one pinned when it was activated or added; nothing was loaded."""

    def __init__(self, what: str, manifest: Path, pinned: str, found: str, pin_file: Path, fix: str) -> None:
        self.problems = [f"{manifest}: digest {found}, pinned {pinned} in {pin_file}"]
        EnclaveError.__init__(
            self,
            f"{what}: {manifest} has digest {found}, but {pin_file} pins {pinned} (the manifest was "
            "rewritten after it was pinned); nothing was loaded",
            fix=fix,
        )


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
        """``REPO/models``: one directory per model, holding its versions and ``active.json``."""
        return self.root / "models"

    @property
    def adapters_dir(self) -> Path:
        """``REPO/adapters``: one adapter artifact per directory."""
        return self.root / "adapters"

    def models(self) -> list[str]:
        """The names of the models in the repository (those with an ``active.json``), sorted."""
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if (p / ACTIVE).is_file())

    def state(self, model: str) -> dict:
        """``active.json`` of a model.

        Its keys: {"active", "digest", "previous": [{"version", "digest"}]}; digest None = unpinned.
        """
        path = self.models_dir / model / ACTIVE
        if not path.is_file():
            raise EnclaveError(
                f"unknown model {model!r}; the repository {self.root} has: {', '.join(self.models()) or 'none'}",
                fix="add one with `enclave serve add`",
            )
        raw = json.loads(path.read_text())
        previous = [p if isinstance(p, dict) else {"version": p, "digest": None} for p in raw.get("previous", [])]
        return {"active": raw["active"], "digest": raw.get("digest"), "previous": previous}

    def versions(self, model: str) -> list[Version]:
        """Every version of a model (each directory with a manifest), sorted by label, the active one marked.

        Manifests are read, not verified; ``verified`` checks a version before it is loaded.

        Raises:
            EnclaveError: the model is not in the repository.
        """
        active = self.state(model)["active"]
        root = self.models_dir / model
        out = []
        for p in sorted(root.iterdir()):
            if p.is_dir() and (p / MANIFEST).is_file():
                out.append(Version(model, p.name, p, read_manifest(p), p.name == active))
        return out

    def active(self, model: str) -> Version:
        """The version of a model that ``active.json`` names, not verified.

        Raises:
            EnclaveError: the model is not in the repository.
        """
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
        raise EnclaveError(
            f"model {model!r} has no version {version!r}; it has: {known}",
            fix="use one of those, or none for the active one",
        )

    def verified(self, version: Version) -> Manifest:
        """Hash every file of a version against its manifest, and the manifest against the pinned digest.

        Args:
            version: the version about to be loaded (the active one, or one activated before it).

        Returns:
            The verified manifest.

        Raises:
            IntegrityError: a file differs from the manifest (each named).
            PinMismatch: the manifest's digest is not the one pinned in ``active.json``.
            EnclaveError: the version was never activated.
        """
        manifest = require_valid(version.path)
        model, label = version.model, version.version
        state, path = self.state(model), self.models_dir / model / ACTIVE
        entries = [{"version": state["active"], "digest": state["digest"]}, *state["previous"]]
        entry = next((e for e in entries if e["version"] == label), None)
        fix = (
            "check the artifact (or restore it from its source), "
            f"then re-pin it with `enclave serve activate {model} {label}`"
        )
        if entry is None:
            raise EnclaveError(
                f"model {model!r} version {label!r} was never activated ({path} does not list it)", fix=fix
            )
        if entry["digest"] is None:
            log.warning(
                "model %s version %s is not pinned (%s predates pins); pin it with `enclave serve activate %s %s`",
                model,
                label,
                path,
                model,
                label,
            )
        elif entry["digest"] != manifest.digest:
            what = f"model {model!r} version {label!r}"
            raise PinMismatch(what, version.path / MANIFEST, entry["digest"], manifest.digest, path, fix)
        return manifest

    def add(self, artifact: Path, model: str, version: str, activate: bool = True) -> Version:
        """Copy a verified artifact in as MODEL/VERSION (atomically), and make it active unless told not to."""
        check_name(model, "model")
        check_name(version, "version")
        manifest = require_valid(Path(artifact))
        if manifest.kind not in SERVABLE_KINDS:
            raise EnclaveError(
                f"{artifact} is a {manifest.kind} artifact, which the server does not run",
                fix=f"add one of: {', '.join(SERVABLE_KINDS)} (adapters: `enclave serve add-adapter`)",
            )
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
            raise EnclaveError(
                f"{model} version {version} is already in {self.root}", fix="install it under another version"
            )
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, final)
        return self._register(model, version, activate)

    def _register(self, model: str, version: str, activate: bool) -> Version:
        if not (self.models_dir / model / ACTIVE).is_file():
            self._write_state(model, {"active": version, "digest": self._digest(model, version), "previous": []})
        elif activate:
            self.activate(model, version)
        return self.version(model, version)

    def add_adapter(self, artifact: Path, version: str | None = None) -> Manifest:
        """Copy a verified adapter in as adapters/NAME (NAME from its manifest) and pin its digest;
        with ``version``, as adapters/NAME@VERSION, the first version of NAME becoming its active one.

        Raises:
            EnclaveError: not an adapter, a manifest ``name`` that is not a safe directory name, or
                another adapter of that name already in the repository.
        """
        manifest = require_valid(Path(artifact))
        if manifest.kind != "adapter":
            raise EnclaveError(
                f"{artifact} is a {manifest.kind} artifact, not an adapter",
                fix="pass a directory made by `enclave tune`",
            )
        check_name(manifest.name, f"{Path(artifact) / MANIFEST}: adapter name")  # it becomes a directory name
        key = manifest.name
        if version is not None:
            check_name(version, "--version")
            if (self.adapters_dir / manifest.name / MANIFEST).is_file():
                raise EnclaveError(
                    f"adapter {manifest.name!r} is in {self.root} without versions",
                    fix="add the new one under another name, or remove the old one and add both with --version",
                )
            key = f"{manifest.name}@{version}"
        final = self.adapters_dir / key
        if (final / MANIFEST).is_file():
            if read_manifest(final).digest != manifest.digest:
                raise EnclaveError(
                    f"adapter {manifest.name!r} is already in {self.root} with other contents ({final})",
                    fix="give the new adapter another name, or remove the old one first",
                )
        else:
            with atomic_dir(final) as tmp:
                shutil.copytree(artifact, tmp, dirs_exist_ok=True)
        self._pin_adapter(key, require_valid(final).digest)
        if version is not None and self.releases(manifest.name) is None:
            self._write_release(manifest.name, {"active": version, "canary": None, "previous": []})
        return manifest

    # --- adapter versions: the active one, a canary share, promote and roll back -----------------

    def releases(self, name: str) -> dict | None:
        """``adapter-releases/NAME.json`` (None for an adapter without versions)."""
        path = self.root / RELEASES / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def adapter_versions(self, name: str) -> list[str]:
        """The versions of adapter NAME in the repository."""
        if not self.adapters_dir.is_dir():
            return []
        return sorted(p.name.split("@", 1)[1] for p in self.adapters_dir.glob(f"{name}@*") if (p / MANIFEST).is_file())

    def _release(self, name: str, version: str | None = None) -> dict:
        state = self.releases(name)
        if state is None:
            raise EnclaveError(
                f"adapter {name!r} has no versions in {self.root}",
                fix="add it with `enclave serve add-adapter ARTIFACT --version V`",
            )
        if version is not None and version not in self.adapter_versions(name):
            raise EnclaveError(
                f"adapter {name!r} has no version {version!r}; it has: {', '.join(self.adapter_versions(name))}",
                fix=f"add it with `enclave serve add-adapter ARTIFACT --version {version}`",
            )
        return state

    def canary(self, name: str, version: str, share: float) -> None:
        """Send ``share`` of the requests for adapter NAME to ``version`` (0 ends the canary)."""
        state = self._release(name, version)
        if not 0.0 <= share <= 1.0:
            raise EnclaveError(f"--share: {share} is not a share", fix="give a number from 0 to 1 (0.1 = 10%)")
        if version == state["active"]:
            raise EnclaveError(f"version {version} of {name!r} is already the active one", fix="canary another version")
        canary = {"version": version, "share": share} if share > 0 else None
        self._write_release(name, {**state, "canary": canary})

    def promote(self, name: str, version: str | None = None) -> str:
        """Make ``version`` (default: the canary's) the active version of adapter NAME; returns it."""
        state = self._release(name, version)
        version = version or (state["canary"] or {}).get("version")
        if version is None:
            raise EnclaveError(f"adapter {name!r} has no canary to promote", fix="name the version: --version V")
        if version != state["active"]:
            previous = [state["active"], *state["previous"]][:20]
            self._write_release(name, {"active": version, "canary": None, "previous": previous})
        return version

    def rollback_adapter(self, name: str) -> str:
        """Make the previously active version of adapter NAME active again (any canary ends); returns it."""
        state = self._release(name)
        if not state["previous"]:
            raise EnclaveError(f"adapter {name!r} has no earlier active version", fix="promote a version by name")
        back, rest = state["previous"][0], state["previous"][1:]
        self._write_release(name, {"active": back, "canary": None, "previous": rest})
        return back

    def _write_release(self, name: str, state: dict) -> None:
        atomic_write_bytes(self.root / RELEASES / f"{name}.json", (json.dumps(state, indent=2) + "\n").encode())

    def place_adapter(self, staged: Path, name: str) -> None:
        """Move a verified adapter directory in as adapters/NAME with one rename (a new name only), and pin it."""
        check_name(name, "adapter")
        final = self.adapters_dir / name
        if final.exists():
            raise EnclaveError(f"adapter {name!r} is already in {self.root}", fix="install it under another name")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, final)
        self._pin_adapter(name, read_manifest(final).digest)

    def adapter(self, name: str) -> Path:
        """A verified adapter directory by name (no paths: names only), checked against its pin.

        Raises:
            EnclaveError: no such adapter (the known ones listed).
            IntegrityError: a file differs from the manifest, or (PinMismatch) the manifest's digest
                is not the one pinned when the adapter was added.
        """
        base, _, version = name.partition("@")
        check_name(base, "adapter")
        if version:
            check_name(version, "adapter version")
        path = self.adapters_dir / name
        if not (path / MANIFEST).is_file():
            known = sorted(p.name for p in self.adapters_dir.iterdir()) if self.adapters_dir.is_dir() else []
            raise EnclaveError(
                f"no adapter {name!r} in {self.adapters_dir}; there are: {', '.join(known) or 'none'}",
                fix="add it with `enclave serve add-adapter`",
            )
        manifest = require_valid(path)
        pin_file = self.root / PINS / f"{name}.json"
        if not pin_file.is_file():
            log.warning(
                "adapter %s is not pinned (added before pins); `enclave serve add-adapter` it again to pin it", name
            )
        elif (pinned := json.loads(pin_file.read_text())["digest"]) != manifest.digest:
            raise PinMismatch(
                f"adapter {name!r}",
                path / MANIFEST,
                pinned,
                manifest.digest,
                pin_file,
                fix=f"remove {path} and add the adapter again from the artifact you trust "
                f"(`enclave serve add-adapter ARTIFACT --repo {self.root}`)",
            )
        return path

    def _pin_adapter(self, name: str, digest: str) -> None:
        pin = {"adapter": name, "digest": digest}
        atomic_write_bytes(self.root / PINS / f"{name}.json", (json.dumps(pin, indent=2) + "\n").encode())

    def activate(self, model: str, version: str) -> None:
        """Make a version active and pin its manifest digest; on the active version it re-pins (after a check)."""
        state = self.state(model)
        digest = self.version(model, version).manifest.digest  # must exist
        if state["active"] == version:
            if state["digest"] != digest:
                self._write_state(model, {**state, "digest": digest})
            return
        previous = [{"version": state["active"], "digest": state["digest"]}, *state["previous"]][:20]
        self._write_state(model, {"active": version, "digest": digest, "previous": previous})

    def rollback(self, model: str) -> str:
        """Make the previously active version active again, with the digest pinned when it was active; returns it."""
        state = self.state(model)
        if not state["previous"]:
            raise EnclaveError(
                f"model {model!r} has no earlier active version to roll back to", fix="activate a version by name"
            )
        back, rest = state["previous"][0], state["previous"][1:]
        digest = back["digest"] or self._digest(model, back["version"])  # unpinned (an old active.json): pin it now
        self._write_state(model, {"active": back["version"], "digest": digest, "previous": rest})
        return back["version"]

    def _digest(self, model: str, version: str) -> str:
        return read_manifest(self.models_dir / model / version).digest

    def _write_state(self, model: str, state: dict) -> None:
        atomic_write_bytes(self.models_dir / model / ACTIVE, (json.dumps(state, indent=2) + "\n").encode())
