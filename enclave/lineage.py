"""Which base an adapter belongs on: an adapter fits a model that is its base, or a copy of its
base that was quantized, pruned or exported without merging anything into it."""

from __future__ import annotations

from pathlib import Path

from enclave.errors import EnclaveError
from enclave.manifest import Manifest, read_manifest
from enclave.store import find_by_digest

MAX_DEPTH = 64
"""Most first-parent steps a lineage walk takes; real chains (base, tune, merge, prune, quantize, export) are short."""


def ancestors(manifest: Manifest, near: Path) -> list[Manifest]:
    """The artifact and its first parents, back to the base (stops at a parent it cannot find).

    Args:
        manifest: the artifact to start from.
        near: its directory; parents are looked up beside it first, then in the store.

    Returns:
        The chain, the artifact first.

    Raises:
        EnclaveError: the chain comes back to a digest it has passed (a manifest that is its own
            ancestor) or is longer than ``MAX_DEPTH``; manifests are files anyone can edit, and
            the walk must end.
    """
    chain, current, seen = [manifest], manifest, {manifest.digest}
    while current.parents:
        digest = current.parents[0].digest
        if digest in seen:
            raise EnclaveError(
                f"lineage of {near}: the manifest of {current.name!r} ({current.digest[:19]}) names {digest[:19]} "
                "as its parent, which is already in its own lineage (a cycle)",
                fix="restore the artifacts' manifest.json files from their source: "
                "a parent is always an older artifact",
            )
        if len(chain) > MAX_DEPTH:
            raise EnclaveError(
                f"lineage of {near}: more than {MAX_DEPTH} parents above {manifest.name!r}, "
                f"stopped at {current.name!r} ({current.digest[:19]})",
                fix="check the manifest.json files of that chain: they were edited or generated",
            )
        path = find_by_digest(digest, near)
        if path is None:
            break
        current = read_manifest(path)
        seen.add(current.digest)
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
