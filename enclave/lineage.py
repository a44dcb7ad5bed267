"""Which base an adapter belongs on: an adapter fits a model that is its base, or a copy of its
base that was quantized, pruned or exported without merging anything into it."""

from __future__ import annotations

from pathlib import Path

from enclave.manifest import Manifest, read_manifest
from enclave.store import find_by_digest


def ancestors(manifest: Manifest, near: Path) -> list[Manifest]:
    """The artifact and its first parents, back to the base (stops at a parent it cannot find)."""
    chain, current = [manifest], manifest
    while current.parents:
        path = find_by_digest(current.parents[0].digest, near)
        if path is None:
            break
        current = read_manifest(path)
        chain.append(current)
    return chain


def adapter_fits(adapter: Manifest, model: Manifest | None, model_path: Path) -> bool:
    """True when the adapter's recorded base is the model or an unmerged ancestor of it
    (also when either side records no digest: nothing to check against)."""
    base = adapter.settings.get("base_model", {}).get("digest")
    if model is None or base is None:
        return True
    for m in ancestors(model, model_path):
        if m.digest == base or (m.parents and m.kind != "merged" and m.parents[0].digest == base):
            return True
        if m.kind == "merged":
            break
    return False
