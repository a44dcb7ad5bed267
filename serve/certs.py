"""`enclave serve cert create`: a test certificate authority, a server certificate and a client certificate.

For trying TLS and mutual TLS before a site's own PKI issues the real certificates. Keys are
ECDSA P-256, written with mode 0600; certificates carry the names clients connect to as
subjectAltName entries (DNS names and IP addresses), as TLS clients require.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from enclave.atomic import atomic_write_bytes
from enclave.errors import EnclaveError


@dataclass(frozen=True)
class Issued:
    """The files `create_certificates` wrote."""

    ca: Path
    ca_key: Path
    cert: Path
    key: Path
    client_cert: Path | None
    client_key: Path | None


def _san(hosts: list[str]):
    from cryptography import x509

    out = []
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            out.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(out)


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Enclave test CA"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _issue(
    subject: str,
    key,
    issuer: str,
    issuer_key,
    days: int,
    ca: bool = False,
    hosts: list[str] | None = None,
    client=False,
):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        b = b.add_extension(_san(hosts), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    atomic_write_bytes(path, data, mode=0o600 if private else 0o644)


def create_certificates(
    out: Path, hosts: list[str], client: str | None = None, days: int = 365, force: bool = False
) -> Issued:
    """Write ca.pem/ca.key, server.pem/server.key (for ``hosts``) and, with ``client``,
    client.pem/client.key into ``out``.

    Args:
        out: the directory (created, mode 0700).
        hosts: DNS names and IP addresses clients connect to; the first is the common name.
        client: the client certificate's common name (for mutual TLS), or None.
        days: validity.
        force: overwrite existing files.

    Returns:
        The paths written.

    Raises:
        EnclaveError: files exist (without ``force``), or no host was given.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not hosts:
        raise EnclaveError(
            "--host: give at least one name or address clients connect to",
            fix="e.g. --host enclave.hospital.local --host 10.0.0.7",
        )
    out = Path(out).expanduser()
    names = ["ca.pem", "ca.key", "server.pem", "server.key"] + (["client.pem", "client.key"] if client else [])
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise EnclaveError(
            f"{out}: {', '.join(existing)} exist", fix="pick another directory, or pass --force to replace them"
        )
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def pem(cert) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _issue("Enclave test CA", ca_key, "Enclave test CA", ca_key, days, ca=True)
    _write(out / "ca.key", pem_key(ca_key), private=True)
    _write(out / "ca.pem", pem(ca))
    _write(out / "server.key", pem_key(server_key), private=True)
    _write(out / "server.pem", pem(_issue(hosts[0], server_key, "Enclave test CA", ca_key, days, hosts=hosts)))
    client_cert = client_key = None
    if client:
        key = ec.generate_private_key(ec.SECP256R1())
        client_key, client_cert = out / "client.key", out / "client.pem"
        _write(client_key, pem_key(key), private=True)
        _write(client_cert, pem(_issue(client, key, "Enclave test CA", ca_key, days, client=True)))
    return Issued(out / "ca.pem", out / "ca.key", out / "server.pem", out / "server.key", client_cert, client_key)
