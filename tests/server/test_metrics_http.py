"""The metrics endpoint survives slow and greedy clients (server/metrics_http.py)."""

from __future__ import annotations

import socket
import threading
import time

from prometheus_client import CollectorRegistry, Counter

from edgecam.server.metrics_http import start_metrics_server


def _scrape(port: int, source: str = "127.0.0.1") -> bytes:
    """GET /metrics from `source` (another loopback address: another client to the server)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: camera\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_half_requests_hold_no_thread_past_the_timeout_nor_past_the_limit() -> None:
    registry = CollectorRegistry()
    Counter("edgecam_test_total", "a counter", registry=registry).inc()
    server = start_metrics_server(0, "127.0.0.1", registry, request_timeout_s=2)
    port = server.server_port
    try:
        baseline = threading.active_count()
        slow = []
        for _ in range(12):  # half a request line each, never finished
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /metr")
            slow.append(s)
        time.sleep(0.5)
        # prometheus_client's own server: one thread per connection, held for good.
        assert threading.active_count() - baseline <= 4
        # Another client (the scraper) is served while this one misbehaves.
        assert b"edgecam_test_total 1.0" in _scrape(port, source="127.0.0.2")
        time.sleep(2.5)  # the slow clients' timeout
        assert threading.active_count() <= baseline
        assert all(s.recv(1) == b"" for s in slow)  # closed by the server
        assert b"200 OK" in _scrape(port)  # and the address may connect again
        for s in slow:
            s.close()
    finally:
        server.shutdown()
        server.server_close()
