"""ETAs learned from measured step times per (preset, width, height, frames).

Before the first measurement of a shape, the config's per-preset guess is used. A queued job's ETA is
the running jobs' remaining time plus the expected time of every job ahead of it, plus its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.jobs import Job
from engine.queue.store import shape_key


@dataclass
class EtaModel:
    measured: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (step_s, overhead_s)
    default_step_s: dict[str, float] = field(default_factory=dict)
    default_overhead_s: float = 2.0

    def per_step(self, job: Job) -> tuple[float, float]:
        key = shape_key(job.fell_back or job.preset, job.width, job.height, job.frames)
        if key in self.measured:
            return self.measured[key]
        return self.default_step_s.get(job.preset, 0.25), self.default_overhead_s

    def expected_s(self, job: Job) -> float:
        step_s, overhead_s = self.per_step(job)
        return job.total_steps * step_s + overhead_s

    def remaining_s(self, job: Job) -> float:
        """Time left for a running job: the steps to go, plus what follows the last step (decode, MP4)."""
        step_s, overhead_s = self.per_step(job)
        if job.step == 0:
            return self.expected_s(job)
        return max(0, job.total_steps - job.step) * step_s + overhead_s / 2

    def queue_etas(self, queued: Sequence[Job], running: Sequence[Job], workers: int = 1) -> dict[str, float]:
        """Seconds until each queued job (in queue order) is done, with `workers` GPUs serving the queue."""
        workers = max(1, workers)
        busy = sorted(self.remaining_s(j) for j in running)
        # Each worker frees up when its current job ends; then takes the next job in queue order.
        free_at = (busy + [0.0] * workers)[:workers] if len(busy) <= workers else busy[:workers]
        free_at = sorted(free_at)
        etas = {}
        for job in queued:
            start = free_at.pop(0)
            end = start + self.expected_s(job)
            etas[job.id] = end
            free_at.append(end)
            free_at.sort()
        return etas
