"""Prometheus metrics for the bot and the workers, served as text on /metrics (`[metrics] port`, 0 = off), with
the process's health beside them on the same port: `/healthz` (200 "ok" while the process runs) and `/readyz`
(200 when the `ready` callable the process gives says so, 503 with its reason otherwise).

Each process keeps its own registry and serves its own endpoint; Prometheus sums across them. No chat
library and no torch here: the GPU peak is read only when torch is already loaded by the caller.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)

from engine.errors import UserError, first_line
from engine.jobs import Job, JobState
from engine.queue.store import Store

# Seconds: a preview render takes seconds to a minute, a queue wait up to many minutes.
DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)
WAIT_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
_REMEMBERED_JOBS = 10_000   # finished jobs remembered so a job is counted once per process
WORKER_STATES = ("loading", "ready", "busy")

log = logging.getLogger("engine.metrics")


def process_registry() -> CollectorRegistry:
    """A registry with the process's own metrics: CPU, memory, open files (process_*), Python's GC and version
    (python_*)."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "animabot"):
        self.registry = registry if registry is not None else process_registry()
        r, ns = self.registry, namespace
        self.queue_depth = Gauge("queue_depth", "Jobs waiting in the queue", namespace=ns, registry=r)
        self.jobs = Counter("jobs", "Jobs by final state", ["state"], namespace=ns, registry=r)
        self.job_duration = Histogram("job_duration_seconds", "Render time of finished jobs, start to done",
                                      ["preset"], buckets=DURATION_BUCKETS, namespace=ns, registry=r)
        self.job_wait = Histogram("job_wait_seconds", "Time from submission to start", ["preset"],
                                  buckets=WAIT_BUCKETS, namespace=ns, registry=r)
        self.fallbacks = Counter("fallbacks", "Renders that fell back to a lighter preset after an out-of-memory",
                                 ["preset"], namespace=ns, registry=r)
        self.gpu_memory_peak = Gauge("gpu_memory_peak_bytes", "Peak GPU memory allocated by this process",
                                     namespace=ns, registry=r)
        self.edits = Counter("message_edits", "Status message edits sent", ["platform"], namespace=ns, registry=r)
        self.retries = Counter("request_retries", "Chat API requests retried (rate limits, network errors)",
                               ["platform"], namespace=ns, registry=r)
        self.workers = Gauge("workers", "Workers alive in the store, by state (loading, ready, busy)", ["state"],
                             namespace=ns, registry=r)
        self._observed: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def observe_job(self, job: Job) -> bool:
        """Count a finished job: its final state, wait, duration (done only) and fall-back.

        Returns False (and counts nothing) for a job that is not final or was already counted here.
        """
        if not job.state.final:
            return False
        with self._lock:
            if job.id in self._observed:
                return False
            self._observed[job.id] = None
            while len(self._observed) > _REMEMBERED_JOBS:
                self._observed.popitem(last=False)
        self.jobs.labels(state=str(job.state)).inc()
        if job.started_at is not None:
            self.job_wait.labels(preset=job.preset).observe(max(0.0, job.started_at - job.created_at))
            if job.state == JobState.DONE and job.finished_at is not None:
                self.job_duration.labels(preset=job.preset).observe(max(0.0, job.finished_at - job.started_at))
        if job.fell_back:
            self.fallbacks.labels(preset=job.fell_back).inc()
        # The worker process measures its GPU peak and leaves it on the job (the bot never loads torch).
        if job.gpu_peak_bytes:
            self.gpu_memory_peak.set(job.gpu_peak_bytes)
        return True

    async def sample_store(self, store: Store) -> None:
        """Refresh the gauges read from the store (call every few seconds)."""
        self.queue_depth.set(len(await store.queued()))
        alive = [w.state for w in await store.workers() if w.alive]
        for state in {*WORKER_STATES, *alive}:
            self.workers.labels(state=state).set(alive.count(state))


# ---- the endpoint: /metrics, /healthz, /readyz ----

Ready = Callable[[], tuple[bool, str]]   # (ready, why not); called from the server's thread


def health_app(registry: CollectorRegistry, ready: Ready | None = None) -> Callable[..., Iterable[bytes]]:
    """A WSGI app: `/healthz`, `/readyz` (always ready without `ready`), and prometheus_client's metrics app
    for every other path (`/metrics`)."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _reply(start_response, "200 OK", "text/plain; charset=utf-8", b"ok\n")
        if path == "/readyz":
            try:
                is_ready, reason = ready() if ready is not None else (True, "")
            except Exception as exc:   # a readiness check that breaks is a reason, not a crash
                is_ready, reason = False, f"readiness check failed: {type(exc).__name__}: {first_line(exc)}"
            body = {"ready": True} if is_ready else {"ready": False, "reason": reason}
            return _reply(start_response, "200 OK" if is_ready else "503 Service Unavailable",
                          "application/json", json.dumps(body).encode() + b"\n")
        return metrics_app(environ, start_response)

    return app


def _reply(start_response: Callable[..., Any], status: str, content_type: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
    return [body]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True   # a slow client never holds the process up


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:   # no line per scrape or probe
        pass


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def start_metrics_server(port: int, registry: CollectorRegistry, addr: str = "0.0.0.0",
                         ready: Ready | None = None) -> MetricsServer | None:
    """Serve /metrics, /healthz and /readyz from a daemon thread; port 0 means the endpoint is off. A port that
    cannot be listened on is a UserError naming it."""
    if not port:
        return None
    try:
        server = make_server(addr, port, health_app(registry, ready), _ThreadingServer, handler_class=_QuietHandler)
    except OSError as exc:
        raise UserError(f"metrics.port: cannot listen on {addr}:{port} ({exc.strerror or exc})", "metrics_port") \
            from None
    thread = threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True)
    thread.start()
    log.info("serving /metrics, /healthz and /readyz on %s:%d", addr, server.server_port)
    return MetricsServer(server, thread)
