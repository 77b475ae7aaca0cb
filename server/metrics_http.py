"""The /metrics endpoint, bounded: a slow or hostile client cannot pile up threads.

prometheus_client's start_http_server gives every connection a thread that waits for its request
without a timeout: each connection that sends half a request line holds a thread for good (measured:
200 such connections, 200 threads, no end). Here a client has `request_timeout_s` to send its request
and read the answer, one address holds at most `per_client` connections at a time and all clients
together `max_connections`; a connection past either limit is closed at once. Prometheus scrapes
one connection at a time, so a limit per address keeps the scraper served while one host misbehaves.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

MAX_CONNECTIONS = 64
PER_CLIENT = 4
REQUEST_TIMEOUT_S = 10.0


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT_S  # socket timeout: reading the request and writing the answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the server's log


class _BoundedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck client never holds up shutdown
    max_connections = MAX_CONNECTIONS
    per_client = PER_CLIENT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        host = client_address[0]
        with self._lock:
            admitted = sum(self._open.values()) < self.max_connections and self._open[host] < self.per_client
            if admitted:
                self._open[host] += 1
        if not admitted:
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._open[client_address[0]] -= 1
                if not self._open[client_address[0]]:
                    del self._open[client_address[0]]


def start_metrics_server(
    port: int,
    addr: str,
    registry: CollectorRegistry,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> WSGIServer:
    """Serve `registry` on http://addr:port/metrics in a daemon thread; shut down with
    .shutdown() and .server_close(). OSError when the port cannot be bound."""

    class Server(_BoundedServer):
        address_family = _family(addr, port)

    class Handler(_Handler):
        timeout = request_timeout_s

    server = make_server(addr, port, make_wsgi_app(registry), Server, handler_class=Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="edgecam-metrics").start()
    return server


def _family(addr: str, port: int) -> socket.AddressFamily:
    """IPv6 for an IPv6 address ("::" included), else IPv4."""
    try:
        infos = socket.getaddrinfo(addr or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return socket.AF_INET  # the bind reports the bad address
    return infos[0][0]
