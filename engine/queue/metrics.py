"""Prometheus metrics for the bot and the workers, served as text on /metrics (`[metrics] port`, 0 = off).

Each process keeps its own registry and serves its own endpoint; Prometheus sums across them. No chat
library and no torch here: the GPU peak is read only when torch is already loaded by the caller.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from engine.jobs import Job, JobState
from engine.queue.store import Store

# Seconds: a preview render takes seconds to a minute, a queue wait up to many minutes.
DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)
WAIT_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
_REMEMBERED_JOBS = 10_000   # finished jobs remembered so a job is counted once per process


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "animabot"):
        self.registry = registry if registry is not None else CollectorRegistry()
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


def start_metrics_server(port: int, registry: CollectorRegistry, addr: str = "0.0.0.0") -> MetricsServer | None:
    """Serve /metrics in Prometheus text format from a daemon thread; port 0 means metrics are off."""
    if not port:
        return None
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread)
