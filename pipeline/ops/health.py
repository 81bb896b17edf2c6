"""The worker's HTTP endpoint for people and orchestrators: /metrics, /healthz, /readyz.

- `/healthz`: the process and its event loop answer. The loop refreshes a
  heartbeat twice a second; a loop stuck for `stall_s` (a blocking call, a
  runaway coroutine) makes it 503, which is what a liveness probe should restart.
- `/readyz`: consuming, recovery finished, partitions assigned; 503 otherwise
  (starting, rebalancing, draining), with the reason in the body. A readiness
  probe takes the worker out of rotation, never restarts it.

The server runs in a thread, so it answers even while the event loop is busy:
that is what lets /healthz tell a stuck loop from a slow one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Gauge, make_wsgi_app

log = logging.getLogger("pipeline.ops.health")

#: How often the event loop proves it is alive.
BEAT_S = 0.5

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Health:
    """Liveness (a heartbeat from the event loop) and readiness (with a reason)."""

    def __init__(
        self,
        ready_gauge: Gauge | None = None,
        stall_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gauge = ready_gauge
        self._stall_s = stall_s
        self._clock = clock
        self._beat = clock()
        self._not_ready: str | None = "starting"
        self._lock = threading.Lock()

    def beat(self) -> None:
        self._beat = self._clock()

    async def heartbeat(self) -> None:
        """Run on the event loop for as long as the worker runs."""
        while True:
            self.beat()
            await asyncio.sleep(BEAT_S)

    def alive(self) -> tuple[bool, str]:
        silent = self._clock() - self._beat
        if silent > self._stall_s:
            return False, f"event loop silent for {silent:.1f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            reason = self._not_ready
        return reason is None, reason or "ready"

    def set_ready(self) -> None:
        self._set(None)

    def set_not_ready(self, reason: str) -> None:
        self._set(reason)

    def _set(self, reason: str | None) -> None:
        with self._lock:
            changed = reason != self._not_ready
            self._not_ready = reason
        if self._gauge is not None:
            self._gauge.set(1 if reason is None else 0)
        if changed:
            log.info(
                "worker ready" if reason is None else "worker not ready",
                extra={"reason": reason or "consuming"},
            )


def _answer(start: StartResponse, ok: bool, detail: str) -> Iterable[bytes]:
    body = json.dumps({"status": "ok" if ok else "unavailable", "detail": detail}).encode()
    start(
        "200 OK" if ok else "503 Service Unavailable",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _not_found(start: StartResponse, path: str) -> Iterable[bytes]:
    body = json.dumps(
        {"status": "not_found", "detail": f"{path[:100]}: try /metrics, /healthz or /readyz"}
    ).encode()
    start(
        "404 Not Found",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def wsgi_app(registry: CollectorRegistry, health: Health) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            return _answer(start, *health.alive())
        if path == "/readyz":
            return _answer(start, *health.ready())
        if path == "/metrics":
            return metrics(environ, start)  # type: ignore[no-any-return]
        # A probe or scrape with the wrong path must fail, not get the metrics page.
        return _not_found(start, path)

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per scrape is noise
        pass


class HttpEndpoint:
    """/metrics, /healthz and /readyz on one port, in a thread of its own."""

    def __init__(self, registry: CollectorRegistry, health: Health) -> None:
        self._app = wsgi_app(registry, health)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:  # noqa: S104 (scraped by Prometheus)
        """Listen on `port` (0 picks a free one); return the bound port."""
        server = make_server(addr, port, self._app, _Server, handler_class=_Quiet)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
        self._thread.start()
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
