"""The HTTP listener of `enclave serve` (uvicorn, in the gRPC server's event loop).

It listens on ``http_port`` at the same ``host``, with the same TLS files (and client
certificates where ``tls.client_ca`` is set): a server that needs TLS and tokens for gRPC needs
them here too. It keeps no access log (the audit log has one line per call, without text), sends
no ``server`` header, reads at most ``limits.max_message_bytes`` of a body, and drains with the
gRPC server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

import uvicorn

from enclave.errors import EnclaveError
from serve.config import ServeConfig
from serve.gate import file_stamp

log = logging.getLogger("enclave.serve")


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: `enclave serve` handles SIGTERM, SIGINT and SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def install_signal_handlers(self) -> None:  # uvicorn before 0.29
        pass


class HttpServer:
    """uvicorn serving ``app`` on ``cfg.http_port``; ``await start()``, ``await stop(grace)``."""

    def __init__(self, cfg: ServeConfig, app) -> None:
        tls = cfg.tls
        self.config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            ssl_certfile=tls.cert,
            ssl_keyfile=tls.key,
            ssl_ca_certs=tls.client_ca,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls.client_ca else ssl.CERT_NONE,
            limit_concurrency=cfg.connections.max_concurrent_streams,
            timeout_keep_alive=int(min(cfg.connections.max_connection_idle_seconds, 75)),
            timeout_graceful_shutdown=int(cfg.grace_seconds) or None,
            lifespan="off",
        )
        self.cfg = cfg
        self.sock = self._bind(cfg.host, cfg.http_port)
        self.port = self.sock.getsockname()[1]
        self.server = _Uvicorn(self.config)
        self.task: asyncio.Task | None = None
        self.stamps = self._stamps()

    @staticmethod
    def _bind(host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            sock.close()
            raise EnclaveError(
                f"http_port: cannot listen on {host}:{port} ({exc.strerror})",
                fix="pick another http_port (0 picks a free one), or leave it empty for no HTTP API",
            ) from None
        sock.set_inheritable(True)
        return sock

    async def start(self) -> None:
        """Listen; returns once uvicorn accepts connections."""
        self.task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raises what stopped it
                raise EnclaveError("the HTTP listener stopped while starting", fix="see the log above")
            await asyncio.sleep(0.01)

    def _stamps(self) -> tuple:
        tls = self.cfg.tls
        return tuple(file_stamp(p) for p in (tls.cert, tls.key, tls.client_ca))

    def reload_tls(self, force: bool = True) -> str | None:
        """Read the certificate, key and client CA again if they changed (or ``force``: SIGHUP);
        connections opened after it use them, open ones keep theirs. A pair that does not load
        (half written, key and certificate apart) is logged and the current one kept.

        Returns:
            "ok" or "error" (for enclave_credentials_reloads), None when there was nothing to read.
        """
        context = getattr(self.config, "ssl", None)
        stamps = self._stamps()
        if context is None or not self.cfg.tls.cert or (not force and stamps == self.stamps):
            return None
        self.stamps = stamps
        try:
            context.load_cert_chain(self.cfg.tls.cert, self.cfg.tls.key)
            if self.cfg.tls.client_ca:
                context.load_verify_locations(self.cfg.tls.client_ca)
        except (OSError, ssl.SSLError) as exc:
            log.error("tls: the HTTP listener keeps its certificate: the new files do not load (%s)", exc)
            return "error"
        log.info("tls: the HTTP listener reloaded its certificate")
        return "ok"

    async def stop(self, grace: float) -> None:
        """Stop listening, let open calls finish within ``grace`` seconds, close."""
        if self.task is None:
            self.sock.close()
            return
        self.config.timeout_graceful_shutdown = int(grace) or None
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), grace + 5)
        except TimeoutError:
            self.server.force_exit = True
            self.task.cancel()
        finally:
            self.sock.close()
