"""Crash-safe writes: a temporary sibling, fsync, then one rename.

A reader either sees nothing under the final name or the complete result; after a crash
(kill -9, power loss) only a hidden ``.NAME.tmp-*`` sibling is left, which the next write
to the same parent removes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".tmp-"


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the directories themselves to disk."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale(parent: Path, name: str) -> None:
    """Remove temporaries a crashed write of ``name`` left in ``parent``."""
    if not parent.is_dir():
        return
    for stale in parent.glob(f".{name}{TMP_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def temp_sibling(final: Path) -> Path:
    """A hidden, unique path next to ``final`` on the same filesystem."""
    return final.parent / f".{final.name}{TMP_MARK}{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory at a temporary path and rename it to ``final`` on success.

    Args:
        final: where the finished directory must appear.
        overwrite: replace an existing ``final``; otherwise an existing one is an error.

    Yields:
        The temporary directory to fill.

    Raises:
        FileExistsError: ``final`` exists and ``overwrite`` is false.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final.parent, final.name)
    if final.exists() and not overwrite:
        raise FileExistsError(final)
    tmp = temp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        _replace_dir(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(tmp, final)
        return
    # Two renames: the old directory leaves the final name before the new one takes it.
    old = temp_sibling(final)
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Args:
        path: the final name.
        data: the whole contents.
        mode: permissions the file has from its creation on (0o600 for secrets: never readable by others, even briefly).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
