"""Slow clients are cut off by a real ``gridsweep serve``, while everyone else is served.

Raw sockets play the slow clients: one declares a body and never sends it (408, closed after
the body timeout), one never finishes its headers (408, closed after the header timeout),
one sends nothing at all (closed); and past the connection cap new requests get 503.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import httpx

from tests.conftest import Server

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
MAX_CONNECTIONS = 8


class SlowClient:
    """A raw connection that sends ``data`` and then reads until the server closes it."""

    def __init__(self, server: Server, data: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        self.sock.sendall(data)
        self.started = time.monotonic()
        self.answer = b""
        self.closed_after: float | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self.answer += chunk
        except OSError:
            pass
        self.closed_after = time.monotonic() - self.started

    def wait(self) -> SlowClient:
        self.thread.join(timeout=30)
        self.sock.close()
        return self


def _served_meanwhile(server: Server, seconds: float) -> list[float]:
    """Latencies of requests made while the slow clients wait: they are answered at once."""
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        assert server.http.get("/api/v1/sweeps").status_code == 200
        latencies.append(time.monotonic() - t0)
        time.sleep(0.1)
    return latencies


def test_slow_clients_are_cut_off_while_others_are_served(
    db_url: str, start_server: Callable[..., Server]
) -> None:
    server = start_server(
        db_url,
        header_timeout_seconds=str(HEADER_TIMEOUT),
        body_timeout_seconds=str(BODY_TIMEOUT),
        max_connections=str(MAX_CONNECTIONS),
    )
    # A fresh server's first request pays for its lazy start (1.5 s seen on a loaded machine):
    # paid here, so the latencies below are about the slow clients alone.
    assert server.http.get("/api/v1/sweeps").status_code == 200
    no_body = SlowClient(
        server,
        b"POST /api/v1/sweeps HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"name": ',
    )
    no_headers = SlowClient(server, b"POST /api/v1/sweeps HTTP/1.1\r\nHost: t\r\nContent-Len")
    silent = SlowClient(server, b"")
    latencies = _served_meanwhile(server, BODY_TIMEOUT + 0.5)
    for c in (no_body, no_headers, silent):
        c.wait()

    assert no_body.answer.startswith(b"HTTP/1.1 408 "), no_body.answer[:200]
    assert b"request body not sent in time" in no_body.answer
    assert no_headers.answer.startswith(b"HTTP/1.1 408 "), no_headers.answer[:200]
    assert b"request headers not sent in time" in no_headers.answer
    assert silent.answer == b""
    # Closed by the server (recv saw the end), after the timeout and not long after it.
    assert no_body.closed_after is not None and BODY_TIMEOUT - 0.1 <= no_body.closed_after < BODY_TIMEOUT + 2
    for c in (no_headers, silent):
        assert c.closed_after is not None and HEADER_TIMEOUT - 0.1 <= c.closed_after < HEADER_TIMEOUT + 2
    # Each answered before even the first slow client was cut off: none waited behind them.
    assert len(latencies) >= 5 and max(latencies) < HEADER_TIMEOUT, latencies
    print(
        f"\nslow clients: no body closed after {no_body.closed_after:.2f}s (408), unfinished headers after "
        f"{no_headers.closed_after:.2f}s (408), silent after {silent.closed_after:.2f}s; "
        f"{len(latencies)} other requests meanwhile, slowest {max(latencies) * 1000:.0f} ms"
    )


def test_past_the_connection_cap_new_requests_get_503_until_idle_ones_are_cut(
    db_url: str, start_server: Callable[..., Server]
) -> None:
    server = start_server(
        db_url, header_timeout_seconds=str(HEADER_TIMEOUT), max_connections=str(MAX_CONNECTIONS)
    )
    hogs = [SlowClient(server, b"") for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.2)
    with httpx.Client(base_url=server.url, timeout=10) as fresh:
        refused = fresh.get("/healthz")
    assert refused.status_code == 503, refused.text
    for h in hogs:
        h.wait()  # the header timeout closes every idle connection
    with httpx.Client(base_url=server.url, timeout=10) as fresh:
        assert fresh.get("/healthz").status_code == 200
