"""A whole stack for end-to-end tests: config for the tiny model, the job service, an in-process worker
holding the session's warm tiny model, and the bot core. Real SQLite file, real renders, real MP4s."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.core import BotCore
from engine.config import Config, parse_config
from engine.queue.service import JobService
from engine.queue.worker import Worker
from tests.tiny_model import make_photo

# Small shapes so a render takes a fraction of a second on two CPU cores; not smoothed unless a test asks.
TINY_PRESETS = {
    "quick": {"steps": 2, "scheduler": "dpmpp_2m", "pixels": 64 * 64, "frames": 4, "fps": 8, "fallback": "lite",
              "smooth": False},
    "hq": {"steps": 4, "scheduler": "dpmpp_2m", "pixels": 64 * 64, "frames": 4, "fps": 8, "fallback": "lite",
           "smooth": False},
    "lite": {"steps": 2, "scheduler": "dpmpp_2m", "pixels": 64 * 64, "frames": 2, "fps": 8, "fallback": ""},
}


async def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "the condition",
                     every: float = 0.05) -> Any:
    """Poll `check` (plain or async) until it returns something truthy, and return that; fail after `timeout`
    seconds (for state that does not wake a fake's `wait_for`: the store, processes, log files)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"not met within {timeout:g} s: {what}"
        await asyncio.sleep(every)


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """Config for tests: tiny model, tiny presets, data in tmp_path. Each keyword updates a section."""
    return parse_config(config_document(tmp_path, **sections))


def config_document(tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """make_config's values as a TOML document's, for write_config (subprocesses)."""
    raw: dict[str, Any] = {
        "engine": {"model": "tiny", "device": "cpu", "negative_prompt": ""},
        "presets": {k: dict(v) for k, v in TINY_PRESETS.items()},
        "queue": {"per_user": 2, "max_length": 50, "jobs_per_hour": 0,
                  "default_step_s": {"quick": 0.1, "hq": 0.1, "lite": 0.1}, "default_overhead_s": 0.5},
        "storage": {"url": str(tmp_path / "jobs.sqlite3"), "data_dir": str(tmp_path / "data")},
        "discord": {"edit_interval_s": 0.05},
        "telegram": {"edit_interval_private_s": 0.05, "edit_interval_group_s": 0.05},
        # The tiny model's random frames are noise, which the NSFW detector may take for anything: tests of the
        # gate turn it on themselves (tests/test_safety*.py).
        "safety": {"classifier": "off"},
    }
    for name, values in sections.items():
        if name == "presets":
            for preset, pv in values.items():
                raw["presets"].setdefault(preset, {}).update(pv)
        else:
            raw.setdefault(name, {}).update(values)
    return raw


def write_config(path: Path, config_raw: dict[str, Any]) -> Path:
    """A config.toml for subprocesses (python -m engine / python -m bot)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []
    for section, values in config_raw.items():
        if section == "presets":
            for name, pv in values.items():
                lines.append(f"[presets.{name}]")
                lines.extend(f"{k} = {value(v)}" for k, v in pv.items())
            continue
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {value(v)}" for k, v in values.items())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def photo_bytes(width: int = 96, height: int = 80, fmt: str = "PNG", seed: int = 0) -> bytes:
    buf = io.BytesIO()
    make_photo(width, height, seed).save(buf, format=fmt)
    return buf.getvalue()


@dataclass
class Stack:
    config: Config
    service: JobService
    core: BotCore
    worker: Worker | None


@contextlib.asynccontextmanager
async def running_stack(config: Config, tiny_parts=None, with_worker: bool = True) -> AsyncIterator[Stack]:
    """Service + bot core in this event loop, and a worker sharing the same SQLite file.

    The worker runs as a task here with the session's warm tiny model (its render runs in a thread), so
    tests do not pay the model import/build for every case. Process-level behaviour (SIGKILL, lease) is
    tested with real worker processes elsewhere.
    """
    from engine.render.renderer import Renderer

    service = JobService(config, poll_interval_s=0.05)
    await service.start()
    core = BotCore(config, service)
    worker = task = None
    if with_worker:
        renderer = Renderer(tiny_parts) if tiny_parts is not None else None
        worker = Worker(config, renderer=renderer)
        task = asyncio.create_task(worker.run(), name="test-worker")
    try:
        yield Stack(config, service, core, worker)
    finally:
        await core.close()
        if worker is not None:
            worker.stop()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
        await service.close()
