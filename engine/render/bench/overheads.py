"""The per-job work outside the model, timed on the CPU with the production code: checking and decoding an
upload, a job's trip through the SQLite queue, the MP4 encode and fitting the file to Discord's upload cap.
No model and no GPU: these rows say how much of a job's time is not the render."""

from __future__ import annotations

import asyncio
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.config import DiscordConfig, LimitsConfig
from engine.render.startup import warm_image


def time_validation(repeat: int, width: int = 1920, height: int = 1440) -> float:
    """Seconds to check and decode a phone-sized JPEG upload (engine.media.validate.load_image)."""
    from engine.media.validate import load_image

    buffer = io.BytesIO()
    warm_image(width, height).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    lim = LimitsConfig()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        load_image(data, max_bytes=lim.max_image_bytes, max_pixels=lim.max_image_pixels,
                   min_side=lim.min_image_side)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_queue(repeat: int, folder: Path) -> float:
    """Seconds from submit to claim of one job through a real SQLite store file."""
    return asyncio.run(_time_queue(repeat, folder))


async def _time_queue(repeat: int, folder: Path) -> float:
    from engine.jobs import Job, JobState, new_job_id
    from engine.queue.sqlite_store import SQLiteStore
    from engine.queue.store import Limits

    store = SQLiteStore(folder / "bench-jobs.sqlite3")
    await store.open()
    try:
        times = []
        for i in range(repeat):
            job = Job(id=new_job_id(), user=f"bench:{i}", prompt_raw="x", prompt="x", preset="quick", seed=i,
                      image_path=str(folder / "in.png"))
            start = time.perf_counter()
            await store.submit(job, Limits())
            claimed = await store.claim("bench-worker")
            times.append(time.perf_counter() - start)
            assert claimed is not None and claimed.id == job.id
            await store.finish(job.id, JobState.DONE)
        return statistics.median(times)
    finally:
        await store.close()


def moving_frames(width: int = 512, height: int = 512, frames: int = 16) -> np.ndarray:
    """(frames, height, width, 3) uint8: a textured picture panning 4 pixels a frame, so the encoder has
    detail and motion to code, like a generated clip (~170 kB at the default quality)."""
    wide = width + 4 * frames
    texture = np.random.default_rng(0).normal(0, 20, (height // 2, wide // 2, 3)).repeat(2, 0).repeat(2, 1)
    still = np.clip(np.asarray(warm_image(wide, height)) + texture, 0, 255).astype(np.uint8)
    return np.stack([still[:, 4 * i:4 * i + width] for i in range(frames)])


def time_mp4(repeat: int, folder: Path, frames: np.ndarray, fps: int = 8) -> tuple[float, Path]:
    from engine.media.video import write_mp4

    times = []
    path = folder / "bench.mp4"
    for _ in range(repeat):
        start = time.perf_counter()
        write_mp4(frames, path, fps=fps)
        times.append(time.perf_counter() - start)
    return statistics.median(times), path


def time_fit(repeat: int, path: Path, max_bytes: int) -> float:
    from engine.media.video import fit_to_size

    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fit_to_size(path, max_bytes, out_path=path.with_name("bench.fit.mp4"))
        times.append(time.perf_counter() - start)
        assert out.stat().st_size <= max_bytes
    return statistics.median(times)


def overhead_rows(repeat: int) -> list[tuple[str, float]]:
    """(label, seconds) for the work a job needs outside the model."""
    cap = DiscordConfig().upload_limit_bytes
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        folder = Path(tmp)
        mp4_s, path = time_mp4(repeat, folder, moving_frames())
        size = path.stat().st_size
        return [
            ("validate a 1920x1440 JPEG upload (load_image)", time_validation(repeat)),
            ("queue submit -> claim, SQLite file", time_queue(max(repeat, 5), folder)),
            (f"MP4 encode, 16 frames 512x512 (write_mp4, {size / 1000:.0f} kB)", mp4_s),
            (f"fit to the Discord cap of {cap / 2**20:.0f} MiB (fits as is)", time_fit(repeat, path, cap)),
            ("fit, forced re-encode to half the size", time_fit(repeat, path, size // 2)),
        ]
