"""Text at rest in the feedback store: AES-256-GCM (``cryptography``'s AEAD) under a key file the
operator holds.

The key file is 32 random bytes, base64 on one line, mode 0600 (``enclave feedback keygen``);
a key file that others can read is refused, as ssh refuses such a private key. Each value is
sealed with a fresh 96-bit nonce and bound to its row and column (the associated data), so a
ciphertext moved to another record or field does not open. Without the key the store holds
ratings, ids and ciphertext only.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

from enclave.errors import EnclaveError

NONCE = 12
MAGIC = b"E1"  # format tag: AES-256-GCM, nonce || ciphertext+tag


class KeyFileError(EnclaveError):
    """The key file is missing, malformed or readable by others."""


def keygen(path: Path) -> Path:
    """Write a new key file (created with mode 0600; an existing file is never overwritten)."""
    from enclave.atomic import atomic_write_bytes

    path = Path(path).expanduser()
    if path.exists():
        raise EnclaveError(
            f"{path} exists; a new key would make the text sealed under the old one unreadable",
            fix="choose another path (keep the old key as long as its store holds text)",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, base64.b64encode(secrets.token_bytes(32)) + b"\n", mode=0o600)
    return path


def read_key(path: Path, setting: str = "feedback.key_file") -> bytes:
    """The 32-byte key in ``path``.

    Raises:
        KeyFileError: no such file, not 32 base64 bytes, or readable by group or others.
    """
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(
            f"{setting}: cannot read {path} ({exc.strerror})",
            fix=f"make one with `enclave feedback keygen {path}`, or point {setting} at the existing key",
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{setting}: {path} is readable by others (mode {stat.S_IMODE(mode):o})",
            fix=f"chmod 600 {path}",
        )
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != 32:
        raise KeyFileError(
            f"{setting}: {path} does not hold a key (32 bytes, base64)",
            fix=f"make one with `enclave feedback keygen NEW_FILE` and point {setting} at it",
        )
    return key


class Sealer:
    """Seal and open text under one key; each value bound to where it is stored."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.aead = AESGCM(key)

    def seal(self, text: str, where: str) -> bytes:
        nonce = os.urandom(NONCE)
        return MAGIC + nonce + self.aead.encrypt(nonce, text.encode(), where.encode())

    def open(self, blob: bytes, where: str) -> str:
        """The text sealed at ``where``.

        Raises:
            ValueError: not sealed under this key, or altered, or sealed for another place.
        """
        from cryptography.exceptions import InvalidTag

        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE + 16:
            raise ValueError(f"{where}: not a sealed value")
        nonce, body = blob[len(MAGIC) : len(MAGIC) + NONCE], blob[len(MAGIC) + NONCE :]
        try:
            return self.aead.decrypt(nonce, body, where.encode()).decode()
        except InvalidTag:
            raise ValueError(f"{where}: does not open under this key (another key, or altered)") from None
