"""What the bench and load scripts share: percentiles and an event-loop stall monitor."""

from __future__ import annotations

import asyncio
import sys
import time


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (q in 0..1) of values: the sorted value at rank round(q * (n - 1))."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def stall_monitor(stop: asyncio.Event, stalls: list[float], tick_s: float = 0.01,
                        report_over_s: float | None = None) -> None:
    """Appends how late each tick_s sleep woke up (the time the loop was busy elsewhere) until stop is set;
    stalls over report_over_s are printed to stderr with their time."""
    start = time.perf_counter()
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(tick_s)
        stalls.append(time.perf_counter() - t0 - tick_s)
        if report_over_s is not None and stalls[-1] > report_over_s:
            print(f"stall of {stalls[-1] * 1000:.0f} ms at {t0 - start:.1f} s", file=sys.stderr)
