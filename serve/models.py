"""The models a running server holds: the active version of each, its adapters, and the swap
to a newly activated version.

New requests go to the active version; when `enclave serve activate` or `rollback` changes
``active.json``, the watcher loads the new version, switches new requests to it, and lets the
old one finish its in-flight requests before closing it.

An adapter with versions (``REPO/adapter-releases/NAME.json``) is loaded as one engine adapter per
version in use, ``NAME@VERSION``: requests for NAME go to the active version, or a canary share of
them (chosen by the request id's hash, so a retried id lands on the same version) to the canary
version. The watcher follows `enclave serve canary|promote|rollback --adapter`; a version no longer
in use is unloaded once its requests finish. Metrics and the feedback store name NAME@VERSION.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from enclave.errors import EnclaveError, IntegrityError
from enclave.lineage import adapter_fits
from enclave.manifest import MANIFEST, read_manifest, require_valid
from enclave.repository import Repository, Version
from enclave.store import home
from serve.config import ServeConfig
from serve.engine.launch import open_engine
from serve.errors import FailedPrecondition, InvalidArgument, NotFound
from serve.metrics import Metrics
from serve.tokenizer import ServeTokenizer

log = logging.getLogger("enclave.serve")


@dataclass(frozen=True)
class Release:
    """Which versions of a versioned adapter answer its requests."""

    active: str
    canary: str | None = None
    share: float = 0.0

    @classmethod
    def of(cls, state: dict) -> Release:
        canary = state.get("canary") or {}
        return cls(state["active"], canary.get("version"), float(canary.get("share", 0.0)))

    def versions(self) -> set[str]:
        return {self.active, *([self.canary] if self.canary else [])}

    def route(self, name: str, request_id: str) -> str:
        """The engine adapter for a request: the canary's for ``share`` of request ids, else the active one's."""
        if self.canary and int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) / 2**32 < self.share:
            return f"{name}@{self.canary}"
        return f"{name}@{self.active}"


@dataclass
class Served:
    """One loaded model version."""

    name: str
    version: Version
    tokenizer: ServeTokenizer
    engine: object
    load_seconds: float
    adapters: dict[str, str] = field(default_factory=dict)  # name -> digest (a versioned one: its active's)
    releases: dict[str, Release] = field(default_factory=dict)  # versioned adapters by name
    loaded: dict[str, dict[str, str]] = field(default_factory=dict)  # versioned adapter -> {version: digest}

    @property
    def backend(self) -> str:
        return self.engine.backend

    @property
    def context_length(self) -> int:
        return self.engine.context_length


class Models:
    """Loads, looks up and swaps the served models."""

    def __init__(self, cfg: ServeConfig, metrics: Metrics) -> None:
        self.cfg, self.metrics = cfg, metrics
        self.repo = Repository(Path(cfg.repo))
        self.active: dict[str, Served] = {}
        self.retired: list[Served] = []
        self.lock = asyncio.Lock()
        self.failed: dict[
            str, tuple
        ] = {}  # model -> (version, pin) that failed to load: not retried until active.json changes
        self.default: str | None = None

    async def start(self) -> None:
        """Load the active version of every model in the repository, and the configured adapters."""
        names = self.repo.models()
        if not names:
            raise EnclaveError(
                f"the model repository {self.repo.root} has no models",
                fix="add one with `enclave serve add ARTIFACT --name NAME`",
            )
        unknown = sorted(set(self.cfg.adapters) - set(names))
        if unknown:
            raise EnclaveError(
                f"adapters: no model {', '.join(unknown)} in {self.repo.root}", fix=f"use one of: {', '.join(names)}"
            )
        if self.cfg.default_model and self.cfg.default_model not in names:
            raise EnclaveError(
                f"default_model: no model {self.cfg.default_model!r} in {self.repo.root}",
                fix=f"use one of: {', '.join(names)}",
            )
        for name in names:
            self.active[name] = await self._open(name, self.repo.active(name))
            self._info(self.active[name])
            for adapter in self.cfg.adapters.get(name, []):
                await self.load_adapter(name, adapter)
        self.default = self.cfg.default_model or names[0]

    async def _open(self, name: str, version: Version) -> Served:
        started = time.perf_counter()
        log.info("loading model %s version %s (%s)", name, version.version, version.manifest.kind)
        await asyncio.to_thread(
            self.repo.verified, version
        )  # every file against its sha256 and the pin, before any is read
        tokenizer = ServeTokenizer(version.path)
        engine = await open_engine(
            version.manifest.kind, version.path, tokenizer, self.cfg, name, self.metrics.gauges(name)
        )
        served = Served(name, version, tokenizer, engine, time.perf_counter() - started)
        for adapter, path in engine.bundled.items():  # adapters inside the artifact (vLLM exports)
            served.adapters[adapter] = read_manifest(path).digest
        self.metrics.load_time.labels(name).set(served.load_seconds)
        for adapter in ("", *served.adapters):
            self.metrics.start_series(name, adapter)
        log.info(
            "model %s version %s ready on %s in %.1f s (context %d)",
            name,
            version.version,
            engine.backend,
            served.load_seconds,
            served.context_length,
        )
        return served

    # --- lookups (request path) ----------------------------------------------------------

    def get(self, model: str, version: str = "") -> Served:
        name = model or self.default
        served = self.active.get(name)
        if served is None:
            raise NotFound(f"model: no model {model!r}; this server has: {', '.join(self.active)}")
        if version and version != served.version.version:
            known = [v.version for v in self.repo.versions(name)]
            if version not in known:
                raise NotFound(f"model_version: model {name!r} has no version {version!r}; it has: {', '.join(known)}")
            raise FailedPrecondition(
                f"model_version: {name} version {version!r} exists but is not active (active: "
                f"{served.version.version}); activate it with `enclave serve activate {name} {version}`"
            )
        return served

    @staticmethod
    def route(served: Served, adapter: str, request_id: str) -> str | None:
        """The engine adapter a request for ``adapter`` runs on (NAME@VERSION for a versioned one)."""
        if not adapter:
            return None
        release = served.releases.get(adapter)
        return release.route(adapter, request_id) if release is not None else adapter

    @staticmethod
    def reroute(served: Served, engine_adapter: str | None, request_id: str) -> str | None:
        """The engine adapter a routed request is submitted on: its version, unless a release change
        dropped that version after the request was routed (its unload then starts at once); then the
        release's route now. Called on the event loop right before the engine takes the job, where
        ``_release`` also runs, so no unload can slip between this check and the submission."""
        if not engine_adapter or "@" not in engine_adapter:
            return engine_adapter
        name, version = engine_adapter.rsplit("@", 1)
        release = served.releases.get(name)
        if release is None or version in served.loaded.get(name, {}):
            return engine_adapter
        return release.route(name, request_id)

    @staticmethod
    def check_adapter(served: Served, adapter: str) -> None:
        if adapter and adapter not in served.adapters:
            raise NotFound(
                f"adapter: model {served.name!r} has no adapter {adapter!r} loaded; it has: "
                f"{', '.join(served.adapters) or 'none'} (load one with the Admin LoadAdapter rpc)"
            )

    # --- adapters (admin) ----------------------------------------------------------------

    async def load_adapter(self, model: str, name: str) -> tuple[str, float]:
        """Verify an adapter from REPO/adapters and load it on a model; returns (digest, seconds)."""
        started = time.perf_counter()
        served = self.get(model)
        if not name or "/" in name or name.startswith("."):
            raise InvalidArgument(
                f"adapter: {name!r} is not an adapter name (a directory name in {self.repo.adapters_dir})"
            )
        async with self.lock:
            if name in served.adapters:
                return served.adapters[name], 0.0
            state = await asyncio.to_thread(self.repo.releases, name) if "@" not in name else None
            if state is not None:
                await self._release(served, name, Release.of(state))
                return served.adapters[name], time.perf_counter() - started
            digest = await self._load_one(served, name)
        log.info("adapter %s loaded on %s in %.2f s", name, served.name, time.perf_counter() - started)
        return digest, time.perf_counter() - started

    async def _load_one(self, served: Served, name: str) -> str:
        """Verify an adapter (NAME or NAME@VERSION) and load it on the engine under that name."""
        try:
            path = await asyncio.to_thread(self._adapter_path, name)  # hash-verified
        except IntegrityError as exc:  # it is there, but not as it was verified and pinned: refuse, don't load
            raise FailedPrecondition(f"adapter: {exc.message}") from None
        except EnclaveError as exc:
            raise NotFound(f"adapter: {exc.message}") from None
        manifest = read_manifest(path)
        if not adapter_fits(manifest, served.version.manifest, served.version.path):
            raise FailedPrecondition(
                f"adapter: {name} was trained on base {manifest.settings.get('base_model', {}).get('digest')}, "
                f"not on model {served.name} ({served.version.manifest.digest}); "
                "load it on the model it was trained for"
            )
        try:
            await served.engine.load_adapter(name, path)
        except EnclaveError as exc:
            raise FailedPrecondition(f"adapter: {exc.message}") from None
        if "@" not in name:
            served.adapters[name] = manifest.digest
        self.metrics.start_series(served.name, name)
        return manifest.digest

    async def _release(self, served: Served, name: str, release: Release) -> None:
        """Load the versions ``release`` uses, route NAME's requests by it, and unload the versions it
        no longer uses once their requests finish (the lock is held)."""
        loaded = served.loaded.setdefault(name, {})
        for version in sorted(release.versions() - set(loaded)):
            loaded[version] = await self._load_one(served, f"{name}@{version}")
        served.releases[name] = release  # new requests route by it from here
        served.adapters[name] = loaded[release.active]
        for version in sorted(set(loaded) - release.versions()):
            del loaded[version]
            asyncio.get_running_loop().create_task(served.engine.unload_adapter(f"{name}@{version}"))
        log.info(
            "adapter %s on %s: version %s active%s",
            name,
            served.name,
            release.active,
            f", {release.share:.0%} to canary {release.canary}" if release.canary else "",
        )

    def _adapter_path(self, name: str) -> Path:
        """REPO/adapters/NAME (verified and checked against its pin), else the artifact store's
        $ENCLAVE_HOME/adapters/NAME (verified); one that fails a check is refused, never replaced."""
        stored = home() / "adapters" / name
        if (self.repo.adapters_dir / name / MANIFEST).is_file() or not (stored / MANIFEST).is_file():
            return self.repo.adapter(name)
        require_valid(stored)
        return stored

    async def unload_adapter(self, model: str, name: str) -> None:
        served = self.get(model)
        self.check_adapter(served, name)
        async with self.lock:
            digest = served.adapters.pop(name)  # new requests for it get NOT_FOUND from now on
            served.releases.pop(name, None)
            engine_names = [f"{name}@{v}" for v in sorted(served.loaded.pop(name, set()))] or [name]
            try:
                for engine_name in engine_names:
                    await served.engine.unload_adapter(engine_name)  # after the requests already on it finish
            except Exception:
                served.adapters[name] = digest
                raise
        log.info("adapter %s unloaded from %s", name, served.name)

    # --- versions ------------------------------------------------------------------------

    async def watch(self) -> None:
        """Poll active.json of every model and switch to a newly activated version; follow the
        releases of versioned adapters."""
        while True:
            await asyncio.sleep(self.cfg.watch_seconds)
            await self._follow_releases()
            for name, served in list(self.active.items()):
                wanted = (served.version.version, None)
                try:
                    state = self.repo.state(name)
                    wanted = (state["active"], state["digest"])
                    if wanted[0] != served.version.version and self.failed.get(name) != wanted:
                        await self.swap(name, self.repo.version(name, wanted[0]))
                except Exception as exc:
                    self.failed[name] = wanted
                    log.error(
                        "model %s: could not switch to version %s (%s); still serving %s",
                        name,
                        wanted[0],
                        exc,
                        served.version.version,
                        exc_info=not isinstance(exc, EnclaveError),
                    )

    async def _follow_releases(self) -> None:
        for served in list(self.active.values()):
            for name, release in list(served.releases.items()):
                try:
                    state = await asyncio.to_thread(self.repo.releases, name)
                    wanted = Release.of(state) if state else release
                    if wanted != release and self.failed.get(f"{served.name}:{name}") != wanted:
                        async with self.lock:
                            await self._release(served, name, wanted)
                except Exception as exc:
                    self.failed[f"{served.name}:{name}"] = wanted
                    log.error(
                        "adapter %s on %s: could not follow its release (%s); still serving version %s",
                        name,
                        served.name,
                        exc,
                        release.active,
                        exc_info=not isinstance(exc, EnclaveError),
                    )

    def _info(self, served: Served) -> None:
        v = served.version
        self.metrics.serving(served.name, v.version, v.manifest.digest, served.backend, v.manifest.kind)

    async def swap(self, name: str, version: Version) -> None:
        """Load a version, reload the old one's adapters on it (verified again), and send new requests to it."""
        old = self.active[name]
        new = await self._open(name, version)
        try:
            await self._reload_adapters(old, new)
        except BaseException:
            await asyncio.to_thread(new.engine.close)  # the old version keeps serving; the new engine is not leaked
            raise
        self.active[name] = new  # new requests go to the new version from here
        self._info(new)
        log.info(
            "model %s: version %s is active (was %s); the old one finishes its requests",
            name,
            version.version,
            old.version.version,
        )
        self.retired.append(old)
        asyncio.get_running_loop().create_task(self._retire(old))

    async def _reload_adapters(self, old: Served, new: Served) -> None:
        for adapter in old.adapters:
            if adapter in new.adapters:
                continue
            if adapter in old.releases:  # versioned: the versions its release uses now
                state = await asyncio.to_thread(self.repo.releases, adapter)
                await self._release(new, adapter, Release.of(state) if state else old.releases[adapter])
                continue
            try:  # the same verifying path as LoadAdapter: the files may have changed since they were loaded
                path = await asyncio.to_thread(self._adapter_path, adapter)
            except EnclaveError as exc:
                log.error(
                    "model %s version %s: adapter %s not reloaded: %s", new.name, new.version.version, adapter, exc
                )
                continue
            manifest = read_manifest(path)
            if adapter_fits(manifest, new.version.manifest, new.version.path):
                await new.engine.load_adapter(adapter, path)
                new.adapters[adapter] = manifest.digest

    async def _retire(self, old: Served) -> None:
        while old.engine.load():
            await asyncio.sleep(0.1)
        await asyncio.to_thread(old.engine.close)
        self.retired.remove(old)
        log.info("model %s version %s closed", old.name, old.version.version)

    def busy(self) -> int:
        return sum(s.engine.load() for s in [*self.active.values(), *self.retired])

    async def close(self) -> None:
        for served in [*self.active.values(), *self.retired]:
            await asyncio.to_thread(served.engine.close)
