"""TLS for the gRPC port, with certificates that reload without a restart, and the exposure rule.

gRPC asks ``ServerCredentials.fetch`` before each new TLS handshake; it answers with a new
certificate configuration when the PEM files changed (or after SIGHUP), and with None (keep the
current one) otherwise. Connections already open keep their session, so calls in flight are not
dropped. A changed certificate that does not load, or whose key does not match it, is logged
and the previous one kept.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from pathlib import Path

import grpc

from enclave.errors import EnclaveError
from serve.config import ServeConfig
from serve.gate import file_stamp

log = logging.getLogger("enclave.serve")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything, so it counts as exposed


def check_exposure(cfg: ServeConfig) -> bool:
    """Refuse a network-reachable listener without TLS and tokens; returns True when it runs insecure by choice.

    Raises:
        EnclaveError: ``host`` is not loopback, TLS or the tokens file is missing, and ``insecure`` is not set.
    """
    missing = [
        what
        for what, ok in (
            ("TLS (tls.cert and tls.key)", cfg.tls.cert and cfg.tls.key),
            ("tokens (auth.tokens_file)", cfg.auth.tokens_file),
        )
        if not ok
    ]
    if is_loopback(cfg.host) or not missing:
        return False
    if cfg.insecure:
        return True
    raise EnclaveError(
        f"host: {cfg.host} is reachable from the network, and this config has no {' and no '.join(missing)}",
        fix="make a test CA and certificate with `enclave serve cert create DIR --host NAME` and a token with "
        "`enclave serve token create --name NAME --role reader --tokens-file tokens.yaml`, then set tls.cert, "
        "tls.key and auth.tokens_file; or listen on 127.0.0.1; or, only on a network nothing else reaches, "
        "set insecure: true",
    )


def _read(cfg: ServeConfig) -> dict[str, bytes]:
    out = {}
    for name in ("cert", "key", "client_ca"):
        path = getattr(cfg.tls, name)
        if path:
            try:
                out[name] = Path(path).expanduser().read_bytes()
            except OSError as exc:
                raise EnclaveError(
                    f"tls.{name}: cannot read {path} ({exc.strerror})", fix="point it at a PEM file"
                ) from None
    return out


def _check_pair(files: dict[str, bytes]) -> None:
    """The key must be the certificate's (else every handshake would fail); errors never include the key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificates(files["cert"])[0]
    except ValueError:
        raise EnclaveError(
            "tls.cert: not a PEM certificate", fix="point it at the server's certificate chain (PEM)"
        ) from None
    try:
        key = serialization.load_pem_private_key(files["key"], password=None)
    except (ValueError, TypeError):
        raise EnclaveError(
            "tls.key: not an unencrypted PEM private key", fix="point it at the server's key (PEM, no passphrase)"
        ) from None
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise EnclaveError("tls.key: does not belong to tls.cert", fix="use the key the certificate was issued for")


class ReloadingCredentials:
    """The server's TLS credentials; the PEM files are read again when they change or on ``reload()``."""

    def __init__(self, cfg: ServeConfig, on_reload=None) -> None:
        self.cfg, self.on_reload = cfg, on_reload
        self.lock = threading.Lock()
        self.forced = False
        if not (cfg.tls.cert and cfg.tls.key):
            raise EnclaveError(
                "tls: cert and key go together", fix="set both tls.cert and tls.key (PEM files), or neither"
            )
        files = _read(cfg)
        _check_pair(files)
        self.stamps = self._stamps()
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(files), self.fetch, require_client_authentication="client_ca" in files
        )

    def _stamps(self) -> tuple:
        return tuple(file_stamp(getattr(self.cfg.tls, n)) for n in ("cert", "key", "client_ca"))

    @staticmethod
    def _configuration(files: dict[str, bytes]):
        return grpc.ssl_server_certificate_configuration(
            [(files["key"], files["cert"])], root_certificates=files.get("client_ca")
        )

    def reload(self) -> None:
        """Read the files again at the next handshake, changed or not (SIGHUP)."""
        self.forced = True

    def fetch(self):
        """gRPC's callback before a handshake: a new configuration, or None to keep the current one."""
        with self.lock:
            stamps = self._stamps()
            if stamps == self.stamps and not self.forced:
                return None
            self.stamps, self.forced = stamps, False
            try:
                files = _read(self.cfg)
                _check_pair(files)
            except EnclaveError as exc:
                log.error("TLS files changed but cannot be used, keeping the previous certificate: %s", exc)
                self._report("error")
                return None
            log.info("TLS certificate reloaded from %s", self.cfg.tls.cert)
            self._report("ok")
            return self._configuration(files)

    def _report(self, result: str) -> None:
        if self.on_reload is not None:
            self.on_reload("tls", result)
