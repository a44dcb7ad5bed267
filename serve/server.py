"""`enclave serve`: the grpc.aio server, its health and reflection services, TLS, and the drain
on SIGTERM.

Start-up: bind the port (0 picks one), report NOT_SERVING, load and warm every model, then
SERVING. SIGTERM or SIGINT: NOT_SERVING, refuse new calls (UNAVAILABLE), let in-flight calls
finish within ``grace_seconds``, close the models, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from enclave.errors import EnclaveError
from enclave.v1 import inference_pb2 as pb
from enclave.v1 import inference_pb2_grpc as rpc
from serve.admission import Admission
from serve.audit import Audit
from serve.config import ServeConfig
from serve.feedback.capture import Capture
from serve.gate import Gate
from serve.metrics import Metrics
from serve.models import Models
from serve.rpc.admin import AdminService
from serve.rpc.inference import InferenceService
from serve.rpc.interceptors import ErrorInterceptor
from serve.rpc.review import ReviewService
from serve.tls import ReloadingCredentials, check_exposure

log = logging.getLogger("enclave.serve")
SERVICES = ("enclave.v1.Inference", "enclave.v1.Admin", "enclave.v1.Review")
# A health service name that is SERVING from the moment the server listens until it exits, also
# while loading and draining: the liveness probe. Readiness is the overall service "".
LIVENESS = "liveness"


# Seconds between the warnings of a server running with `insecure: true`.
INSECURE_WARNING_SECONDS = 60.0


def grpc_options(cfg: ServeConfig) -> list[tuple[str, int]]:
    """Message sizes and the transport limits of ``connections`` as grpc core channel arguments."""
    size, c = cfg.limits.max_message_bytes, cfg.connections
    ms = lambda seconds: int(seconds * 1000)  # noqa: E731
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.so_reuseport", 0),  # a second server on the port is an error
        ("grpc.max_concurrent_streams", c.max_concurrent_streams),
        ("grpc.max_connection_idle_ms", ms(c.max_connection_idle_seconds)),
        ("grpc.max_connection_age_ms", ms(c.max_connection_age_seconds)),
        ("grpc.max_connection_age_grace_ms", ms(c.max_connection_age_grace_seconds)),
        ("grpc.keepalive_time_ms", ms(c.keepalive_time_seconds)),
        ("grpc.keepalive_timeout_ms", ms(c.keepalive_timeout_seconds)),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(c.min_ping_interval_seconds)),
        ("grpc.http2.max_ping_strikes", 2),
    ]


def host_port(host: str, port: int) -> str:
    """``host:port`` as gRPC reads it (IPv6 addresses in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class Server:
    """One Enclave server: create, ``await start()``, then ``await stop()``."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.insecure = check_exposure(cfg)
        self.metrics = Metrics()
        self.metrics.insecure.set(1 if self.insecure else 0)
        self.audit = Audit(cfg.audit_log, max_bytes=cfg.audit_max_bytes, backups=cfg.audit_backups)
        self.feedback = Capture(cfg.feedback, self.metrics, self.audit)  # a damaged store: no start
        self.gate = Gate(cfg)
        self.models = Models(cfg, self.metrics)
        self.grpc = grpc.aio.server(interceptors=[ErrorInterceptor()], options=grpc_options(cfg))
        self.health = health.aio.HealthServicer()
        self.admission = Admission(cfg, self.models, self.gate, self.metrics, self.audit, self.feedback)
        rpc.add_InferenceServicer_to_server(InferenceService(self.admission, self.models), self.grpc)
        rpc.add_AdminServicer_to_server(AdminService(self.admission, self.models), self.grpc)
        rpc.add_ReviewServicer_to_server(ReviewService(self.admission), self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        if cfg.reflection:
            names = [pb.DESCRIPTOR.services_by_name[s.split(".")[-1]].full_name for s in SERVICES]
            reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc)
        address = host_port(cfg.host, cfg.port)
        self.tls = (
            ReloadingCredentials(cfg, self._reloaded) if (cfg.tls.cert or cfg.tls.key or cfg.tls.client_ca) else None
        )
        try:
            self.port = (
                self.grpc.add_secure_port(address, self.tls.credentials)
                if self.tls
                else self.grpc.add_insecure_port(address)
            )
        except RuntimeError:
            raise EnclaveError(
                f"port: cannot listen on {address} (in use, or not an address of this machine)",
                fix="pick another --port (0 picks a free one) or stop what holds it",
            ) from None
        self.metrics_port: int | None = None
        self.probe, self.health_port = self._probe_server(cfg)
        self.http = self._http_server(cfg)
        self.http_port = self.http.port if self.http is not None else None
        self.tasks: list[asyncio.Task] = []

    def _reloaded(self, what: str, result: str) -> None:
        self.metrics.reloads.labels(what, result).inc()

    def reload_credentials(self) -> None:
        """SIGHUP: read the tokens file and the TLS files again (calls in flight keep going)."""
        log.info("SIGHUP: reloading the tokens file and TLS certificates")
        if self.gate.path:
            self._reloaded("tokens", "ok" if self.gate.reload(force=True) else "error")
        if self.tls is not None:
            self.tls.reload()
        if self.http is not None:
            result = self.http.reload_tls()
            if result is not None:
                self._reloaded("tls_http", result)

    async def _watch_credentials(self) -> None:
        """Reload the tokens file when it changes (gRPC checks its TLS files at each handshake, the
        HTTP listener here when they change)."""
        while True:
            await asyncio.sleep(self.cfg.watch_seconds)
            result = self.http.reload_tls(force=False) if self.http is not None else None
            if result is not None:
                self._reloaded("tls_http", result)
            stamp = self.gate.stamp
            if self.gate.reload():
                self._reloaded("tokens", "ok")
            elif self.gate.stamp != stamp:
                self._reloaded("tokens", "error")

    async def _warn_insecure(self) -> None:
        while True:
            log.warning(
                "insecure: true: listening on %s:%d without %s; anyone who can reach this address can read prompts "
                "and answers. Configure tls.* and auth.tokens_file (README, Security)",
                self.cfg.host,
                self.port,
                "TLS" if self.tls is None else "tokens",
            )
            await asyncio.sleep(INSECURE_WARNING_SECONDS)

    def _http_server(self, cfg: ServeConfig):
        """The OpenAI-compatible HTTP API on ``http_port``, over the same admission (None without one)."""
        if cfg.http_port is None:
            return None
        from serve.openai.app import OpenAIApi
        from serve.openai.server import HttpServer

        api = OpenAIApi(self.admission, self.models, cfg.limits.max_message_bytes, cfg.limits.max_choices)
        return HttpServer(cfg, api.app())

    def _probe_server(self, cfg: ServeConfig):
        """The health-only plaintext server for probes (it carries no model traffic and no data)."""
        if cfg.health_port is None:
            return None, None
        probe = grpc.aio.server(options=grpc_options(cfg))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, probe)
        try:
            return probe, probe.add_insecure_port(host_port(cfg.host, cfg.health_port))
        except RuntimeError:
            raise EnclaveError(
                f"health_port: cannot listen on {cfg.host}:{cfg.health_port} "
                "(in use, or not an address of this machine)",
                fix="pick another health_port (0 picks a free one), or leave it empty for none",
            ) from None

    async def _status(self, status) -> None:
        for name in ("", *SERVICES):
            await self.health.set(name, status)

    async def start(self) -> None:
        """Listen (NOT_SERVING), load and warm the models, then SERVING."""
        await self._status(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.grpc.start()
        if self.probe is not None:
            await self.probe.start()
        if self.http is not None:
            await self.http.start()
        if self.cfg.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(
                    self.cfg.metrics_host,
                    self.cfg.metrics_port,
                    self.cfg.metrics_max_connections,
                    self.cfg.metrics_timeout_seconds,
                )
            except OSError as exc:
                raise EnclaveError(
                    f"metrics_port: cannot listen on {self.cfg.metrics_host}:{self.cfg.metrics_port} ({exc.strerror})",
                    fix="pick another --metrics-port (0 picks a free one), or metrics_port=null for none",
                ) from None
        scheme = "TLS" if self.tls else "plaintext"
        log.info(
            "listening on %s:%d (%s%s, %s)%s; metrics on %s:%s/metrics",
            self.cfg.host,
            self.port,
            scheme,
            ", client certificates required" if self.cfg.tls.client_ca else "",
            "tokens required" if self.gate.tokens else "no tokens: no admin",
            f", OpenAI-compatible HTTP API on port {self.http_port}" if self.http is not None else "",
            self.cfg.metrics_host,
            self.metrics_port,
        )
        loop = asyncio.get_running_loop()
        if self.insecure:
            self.tasks.append(loop.create_task(self._warn_insecure()))
        self.tasks.append(loop.create_task(self._watch_credentials()))
        await self.models.start()
        self.tasks.append(loop.create_task(self.models.watch()))
        self.gate.accepting = True
        await self._status(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s (default %s)", ", ".join(self.models.active), self.models.default)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, refuse new calls, wait up to ``grace`` seconds for in-flight ones, close."""
        grace = self.cfg.grace_seconds if grace is None else grace
        self.gate.accepting = False
        await self._status(health_pb2.HealthCheckResponse.NOT_SERVING)
        busy = self.models.busy()
        log.info("draining: %d requests in flight, up to %.0f s", busy, grace)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(self.grpc.stop(grace), *([self.http.stop(grace)] if self.http is not None else []))
        if self.probe is not None:
            await self.probe.stop(0)
        self.admission.close()
        await self.models.close()
        self.feedback.close()
        self.metrics.close()
        self.audit.close()
        log.info("stopped")


async def serve(cfg: ServeConfig) -> int:
    """Run until SIGTERM or SIGINT, then drain and return 0.

    SIGHUP reloads the tokens file and the TLS files. A signal that arrives while the models are still
    loading stops the server at once (no drain). Once serving, prints one line with the ports it listens on.

    Args:
        cfg: the validated server config.

    Returns:
        0, the exit status, after a clean shutdown.

    Raises:
        EnclaveError: the config exposes a network address without TLS and tokens (and ``insecure`` is not
            set), a port cannot be bound, or the model repository cannot be served (no models, or an
            adapter or default model that is not in it); an error while starting stops the listeners and
            background tasks and is raised again.
    """
    server = Server(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_credentials)
    starting = loop.create_task(server.start())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is not None:
        for task in server.tasks:
            task.cancel()
        await server.grpc.stop(0)
        if server.probe is not None:
            await server.probe.stop(0)
        if server.http is not None:
            await server.http.stop(0)
        server.metrics.close()
        raise starting.exception()
    if not starting.done():  # stopped while loading
        starting.cancel()
        await server.stop(0)
        return 0
    probe = f", health on port {server.health_port}" if server.health_port else ""
    http = f", OpenAI API on port {server.http_port}" if server.http is not None else ""
    print(
        f"enclave serve: listening on {cfg.host}:{server.port}, metrics on port {server.metrics_port}{probe}{http}",
        flush=True,
    )
    await stopping
    log.info("signal received: shutting down")
    await server.stop()
    return 0
