"""The /metrics HTTP endpoint: prometheus_client's WSGI app on a small server with a connection cap.

prometheus_client's own ``start_http_server`` starts a thread per connection with no limit and
no timeout, so idle sockets add threads to the inference process without bound. This server
serves at most ``max_connections`` connections at once (more are closed as soon as they are
accepted), and a connection that sends nothing for ``timeout`` seconds is closed.
"""

from __future__ import annotations

import logging
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

log = logging.getLogger("enclave.serve")


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        pass  # one line per scrape is noise; errors still reach the log


class _CappedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    max_connections = 16
    timeout_seconds = 10.0

    def server_bind(self) -> None:
        if ":" in self.server_address[0]:
            self.address_family = socket.AF_INET6
            self.socket = socket.socket(self.address_family, self.socket_type)
        super().server_bind()

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)  # over the cap: closed at once, no thread
            return
        request.settimeout(self.timeout_seconds)
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:
        pass  # a peer that times out or resets is not the server's error


class MetricsServer:
    """``/metrics`` for one registry, in a background thread; ``port`` is the bound port."""

    def __init__(self, registry, host: str, port: int, max_connections: int = 16, timeout: float = 10.0) -> None:
        server_class = type(
            "MetricsHTTPServer", (_CappedServer,), {"max_connections": max_connections, "timeout_seconds": timeout}
        )
        self.httpd = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler)
        self.httpd.slots = threading.BoundedSemaphore(max_connections)
        self.httpd.refused = 0
        self.port = self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
