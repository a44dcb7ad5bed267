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
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from enclave.errors import EnclaveError
from enclave.v1 import inference_pb2 as pb
from enclave.v1 import inference_pb2_grpc as rpc
from serve.audit import Audit
from serve.config import ServeConfig
from serve.interceptors import ErrorInterceptor
from serve.metrics import Metrics
from serve.models import Models
from serve.service import AdminService, Gate, InferenceService

log = logging.getLogger("enclave.serve")
SERVICES = ("enclave.v1.Inference", "enclave.v1.Admin")
# A health service name that is SERVING from the moment the server listens until it exits, also
# while loading and draining: the liveness probe. Readiness is the overall service "".
LIVENESS = "liveness"


def credentials(cfg: ServeConfig) -> grpc.ServerCredentials | None:
    """TLS from the configured PEM files; with tls.client_ca, clients must present a certificate (mTLS)."""
    tls = cfg.tls
    if not (tls.cert or tls.key or tls.client_ca):
        return None
    if not (tls.cert and tls.key):
        raise EnclaveError("tls: cert and key go together", fix="set both tls.cert and tls.key (PEM files), or neither")
    read = {}
    for name in ("cert", "key", "client_ca"):
        path = getattr(tls, name)
        if path:
            try:
                read[name] = Path(path).expanduser().read_bytes()
            except OSError as exc:
                raise EnclaveError(f"tls.{name}: cannot read {path} ({exc.strerror})", fix="point it at a PEM file") from None
    return grpc.ssl_server_credentials([(read["key"], read["cert"])], root_certificates=read.get("client_ca"),
                                       require_client_auth="client_ca" in read)  # fmt: skip


class Server:
    """One Enclave server: create, ``await start()``, then ``await stop()``."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.audit = Audit(cfg.audit_log)
        self.gate = Gate(cfg)
        self.models = Models(cfg, self.metrics)
        size = cfg.limits.max_message_bytes
        self.grpc = grpc.aio.server(interceptors=[ErrorInterceptor()],
                                    options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size),
                                             ("grpc.so_reuseport", 0)])  # fmt: skip  (a second server on the port is an error)
        self.health = health.aio.HealthServicer()
        rpc.add_InferenceServicer_to_server(InferenceService(cfg, self.models, self.gate, self.metrics, self.audit), self.grpc)
        rpc.add_AdminServicer_to_server(AdminService(self.models, self.gate, self.audit), self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        names = [pb.DESCRIPTOR.services_by_name[s.split(".")[-1]].full_name for s in SERVICES]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc)
        address = f"{cfg.host}:{cfg.port}"
        creds = credentials(cfg)
        try:
            self.port = self.grpc.add_secure_port(address, creds) if creds else self.grpc.add_insecure_port(address)
        except RuntimeError:
            raise EnclaveError(f"port: cannot listen on {address} (in use, or not an address of this machine)",
                               fix="pick another --port (0 picks a free one) or stop what holds it") from None
        self.metrics_port: int | None = None
        self.probe, self.health_port = self._probe_server(cfg)
        self.watcher: asyncio.Task | None = None

    def _probe_server(self, cfg: ServeConfig):
        """The health-only plaintext server for probes (it carries no model traffic and no data)."""
        if cfg.health_port is None:
            return None, None
        probe = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, probe)
        try:
            return probe, probe.add_insecure_port(f"{cfg.host}:{cfg.health_port}")
        except RuntimeError:
            raise EnclaveError(f"health_port: cannot listen on {cfg.host}:{cfg.health_port} (in use, or not an address of this machine)",
                               fix="pick another health_port (0 picks a free one), or leave it empty for none") from None

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
        if self.cfg.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(self.cfg.host, self.cfg.metrics_port)
            except OSError as exc:
                raise EnclaveError(f"metrics_port: cannot listen on {self.cfg.host}:{self.cfg.metrics_port} ({exc.strerror})",
                                   fix="pick another --metrics-port (0 picks a free one), or metrics_port=null for none") from None
        scheme = "TLS" if credentials(self.cfg) else "plaintext"
        log.info("listening on %s:%d (%s%s); metrics on :%s/metrics", self.cfg.host, self.port, scheme,
                 ", client certificates required" if self.cfg.tls.client_ca else "", self.metrics_port)  # fmt: skip
        await self.models.start()
        self.watcher = asyncio.get_running_loop().create_task(self.models.watch())
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
        if self.watcher is not None:
            self.watcher.cancel()
        await self.grpc.stop(grace)
        if self.probe is not None:
            await self.probe.stop(0)
        await self.models.close()
        self.metrics.close()
        self.audit.close()
        log.info("stopped")


async def serve(cfg: ServeConfig) -> int:
    """Run until SIGTERM or SIGINT, then drain and return 0."""
    server = Server(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = loop.create_task(server.start())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is not None:
        await server.grpc.stop(0)
        if server.probe is not None:
            await server.probe.stop(0)
        server.metrics.close()
        raise starting.exception()
    if not starting.done():  # stopped while loading
        starting.cancel()
        await server.stop(0)
        return 0
    probe = f", health on port {server.health_port}" if server.health_port else ""
    print(f"enclave serve: listening on {cfg.host}:{server.port}, metrics on port {server.metrics_port}{probe}", flush=True)
    await stopping
    log.info("signal received: shutting down")
    await server.stop()
    return 0
