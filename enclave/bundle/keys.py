"""Ed25519 signing keys for bundles: PEM files, a short key id, signing and checking."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from enclave.atomic import atomic_write_bytes
from enclave.errors import EnclaveError


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - a dependency of the base install
        raise EnclaveError("bundles need the `cryptography` package", fix="pip install 'cryptography>=44'") from exc
    return serialization, ed25519


def key_id(public) -> str:
    """The first 16 hex digits of the sha256 of the raw 32-byte public key."""
    serialization, _ = _crypto()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _passphrase(env: str | None) -> bytes | None:
    if not env:
        return None
    value = os.environ.get(env)
    if not value:
        raise EnclaveError(
            f"--passphrase-env {env}: the environment variable {env} is empty or unset", fix=f"export {env}=..."
        )
    return value.encode()


def keygen(out: Path, passphrase_env: str | None = None, overwrite: bool = False) -> tuple[Path, Path, str]:
    """Write OUT.key (PKCS#8 PEM, mode 0600) and OUT.pub (SubjectPublicKeyInfo PEM); returns them and the key id."""
    serialization, ed25519 = _crypto()
    private_path, public_path = Path(f"{out}.key"), Path(f"{out}.pub")
    for path in (private_path, public_path):
        if path.exists() and not overwrite:
            raise EnclaveError(
                f"{path} exists; keygen never replaces a key", fix="choose another name, or pass --overwrite"
            )
    private = ed25519.Ed25519PrivateKey.generate()
    secret = _passphrase(passphrase_env)
    encryption = serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    old = os.umask(0o077)
    try:
        atomic_write_bytes(private_path, pem)
    finally:
        os.umask(old)
    private_path.chmod(0o600)
    public = private.public_key()
    atomic_write_bytes(
        public_path, public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path, key_id(public)


def load_private(path: Path, passphrase_env: str | None = None):
    """Read an Ed25519 private key from a PEM file (as `enclave bundle keygen` writes NAME.key).

    Args:
        path: the PEM file.
        passphrase_env: the environment variable holding the key's passphrase, or None for an unencrypted key.

    Returns:
        The ``Ed25519PrivateKey``.

    Raises:
        EnclaveError: no such file, not a readable PEM private key (a wrong or missing passphrase included),
            not an Ed25519 key, or ``passphrase_env`` names an empty or unset variable.
    """
    serialization, ed25519 = _crypto()
    path = Path(path).expanduser()
    if not path.is_file():
        raise EnclaveError(
            f"--key {path}: no such file",
            fix="make one with `enclave bundle keygen NAME` (it writes NAME.key and NAME.pub)",
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=_passphrase(passphrase_env))
    except (ValueError, TypeError) as exc:
        raise EnclaveError(
            f"--key {path}: not a readable PEM private key ({exc})",
            fix="pass the NAME.key written by `enclave bundle keygen` (and --passphrase-env if it is encrypted)",
        ) from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise EnclaveError(
            f"--key {path}: a {type(key).__name__}, not an Ed25519 key", fix="make one with `enclave bundle keygen`"
        )
    return key


def load_public(path: Path):
    """Read an Ed25519 public key from a PEM file (as `enclave bundle keygen` writes NAME.pub).

    Args:
        path: the PEM file.

    Returns:
        The ``Ed25519PublicKey``.

    Raises:
        EnclaveError: no such file, not a PEM public key, or not an Ed25519 key.
    """
    serialization, ed25519 = _crypto()
    path = Path(path).expanduser()
    if not path.is_file():
        raise EnclaveError(
            f"--key {path}: no such public key file",
            fix="pass the NAME.pub written by `enclave bundle keygen` on the creating machine",
        )
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise EnclaveError(
            f"--key {path}: not a PEM public key ({exc})", fix="pass the NAME.pub file, not NAME.key"
        ) from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise EnclaveError(
            f"--key {path}: a {type(key).__name__}, not an Ed25519 public key",
            fix="pass a key made by `enclave bundle keygen`",
        )
    return key


def trusted_keys(paths: list[Path]) -> dict[str, object]:
    """Public keys by key id: the files given, else every *.pub in $ENCLAVE_HOME/trusted-keys."""
    from enclave.store import home

    if not paths:
        paths = sorted((home() / "trusted-keys").glob("*.pub"))
    if not paths:
        raise EnclaveError(
            "no trusted public key: a bundle is only read when its signature checks against one",
            fix=f"pass --key CREATOR.pub, or copy it into {home() / 'trusted-keys'}/",
        )
    keys = [load_public(p) for p in paths]
    return {key_id(k): k for k in keys}


def sign(private, data: bytes) -> dict:
    """Sign ``data``; returns what bundle.sig holds: the algorithm, the key id and the base64 signature."""
    return {
        "algorithm": "ed25519",
        "key_id": key_id(private.public_key()),
        "signature": base64.b64encode(private.sign(data)).decode(),
    }


def check(public, data: bytes, signature: dict) -> bool:
    """Whether ``signature`` (as ``sign`` returns it) is ``public``'s valid signature of ``data``.

    A malformed signature (missing, not base64, wrong type) is False, not an error. The key id in it is not read.
    """
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(base64.b64decode(signature["signature"], validate=True), data)
    except (InvalidSignature, ValueError, KeyError, TypeError):
        return False
    return True
