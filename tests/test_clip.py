"""Clip edits: smooth (ffmpeg's minterpolate to 24 fps), loop (ping-pong) and join (extend), on real frames;
and the CLI's --smooth / --loop / --extend on real renders of the tiny model."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import skimage.data
from PIL import Image

from engine.jobs import JobState
from engine.media.clip import finish, join, loop, smooth, smooth_factor
from engine.media.video import probe_mp4, read_mp4_frames
from tests.harness import TINY_PRESETS, write_config
from tests.test_cli import run
from tests.tiny_model import make_photo


def panning_clip(n: int = 16, size: int = 128) -> np.ndarray:
    """A photo panned diagonally: real motion for the interpolator to follow."""
    big = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((size + 4 * n, size + 4 * n)))
    return np.stack([big[2 * k:2 * k + size, 3 * k:3 * k + size] for k in range(n)])


def test_smooth_makes_24_fps_with_the_rendered_frames_in_place():
    frames = panning_clip()
    out, fps = smooth(frames, 8)
    assert (fps, len(out), out.shape[1:]) == (24, 46, frames.shape[1:])
    assert np.array_equal(out[::3], frames)
    # An in-between frame lies between its neighbours (motion-compensated), not equal to either.
    middle = out[22].astype(int)
    assert 0 < np.abs(middle - out[21]).mean() < np.abs(out[24].astype(int) - out[21]).mean()


def test_smooth_leaves_fast_clips_and_single_frames_alone():
    frames = panning_clip(4)
    assert smooth_factor(24) == 1 and smooth(frames, 24)[1] == 24 and smooth(frames[:1], 8)[0].shape[0] == 1
    assert smooth_factor(12) == 2 and len(smooth(frames, 12)[0]) == 7


def test_loop_plays_forward_then_backward_without_repeating_the_ends():
    frames = panning_clip()
    out = loop(frames)
    assert len(out) == 30
    assert all(np.array_equal(out[k], out[30 - k]) for k in range(1, 16))
    assert np.array_equal(out[:16], frames)


def test_smooth_then_loop_and_join():
    frames = panning_clip()
    out, fps = finish(frames, 8, smooth_it=True, loop_it=True)
    assert (len(out), fps) == (90, 24)
    more = panning_clip()[::-1]
    joined = join(frames, np.concatenate([frames[-1:], more[1:]]))
    assert len(joined) == 31 and np.array_equal(joined[:16], frames)
    small = join(frames, np.zeros((16, 64, 64, 3), np.uint8))   # an extension that fell back to a smaller size
    assert small.shape == (31, 128, 128, 3)


@pytest.fixture
def clip_cfg(tmp_path):
    presets = {**TINY_PRESETS, "quick": {**TINY_PRESETS["quick"], "frames": 16}}
    return write_config(tmp_path / "config.toml", {"engine": {"model": "tiny", "device": "cpu"},
                                                   "presets": presets})


def generate(tmp_path, cfg, name, *flags):
    photo = tmp_path / "photo.png"
    make_photo(96, 96).save(photo)
    out = tmp_path / f"{name}.mp4"
    proc = run("generate", photo, "--prompt", "waves rolling in", "--seed", 7, "--config", cfg, "--out", out,
               "--json", *flags)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), out


@pytest.mark.slow
def test_cli_smooth_loop_and_extend(tmp_path, clip_cfg):
    info, smoothed = generate(tmp_path, clip_cfg, "smooth", "--smooth")
    probed = probe_mp4(smoothed)
    assert (info["frames"], info["fps"], probed["frames"]) == (46, 24, 46) and abs(probed["fps"] - 24) < 0.01
    plain = read_mp4_frames(smoothed).astype(int)[::3]   # the rendered frames sit at 3k: the plain render
    assert len(plain) == 16

    _, looped = generate(tmp_path, clip_cfg, "loop", "--loop")
    frames = read_mp4_frames(looped).astype(int)
    assert len(frames) == 30
    mirrored = max(np.abs(frames[k] - frames[30 - k]).mean() for k in range(1, 16))
    neighbours = min(np.abs(frames[k] - frames[k + 1]).mean() for k in range(15))
    assert mirrored < neighbours / 4, (mirrored, neighbours)   # equal up to compression (of random-model noise)

    info, extended = generate(tmp_path, clip_cfg, "extend", "--extend", "1")
    joined = read_mp4_frames(extended).astype(int)
    assert len(joined) == info["frames"] == 31
    same = np.abs(joined[:16] - plain).mean()
    assert same < neighbours / 4, (same, neighbours)   # the plain render's frames (same seed) come first
    assert np.abs(joined[17:] - plain[-1]).mean() > neighbours / 2   # then new ones


# ---- through the bot core and the worker (a recording UI)

async def test_an_extension_of_a_smooth_clip_is_joined_then_smoothed_and_info_shows_the_chain(tmp_path, tiny_parts):
    from tests.harness import make_config, running_stack
    from tests.test_core import RecordingUI, request

    config = make_config(tmp_path)
    async with running_stack(config, tiny_parts) as stack:
        ui = RecordingUI()
        sub = await stack.core.submit(request(smooth=True, seed=9))
        await asyncio.wait_for(stack.core.follow(sub.job, ui, sub.hints), 60)
        first = await stack.service.get(sub.job.id)
        assert probe_mp4(first.result_path)["frames"] == 10 and probe_mp4(first.clip_path)["frames"] == 4
        _, ext = await stack.core.on_button("extend", first.id, "test", "1", "en")
        ui = RecordingUI()
        await asyncio.wait_for(stack.core.follow(ext, ui), 60)
        done = await stack.service.get(ext.id)
        assert probe_mp4(done.clip_path)["frames"] == 7 and probe_mp4(done.result_path)["frames"] == 19
        assert (done.seed, done.extends, done.extension) == (9, first.id, 1)
        info = stack.core.info_text(done, "en")
        assert f"Extension 1 of clip {first.id}" in info and "Smoothed to 24 fps" in info
        assert "片段" in stack.core.info_text(done, "zh")


async def test_smooth_and_loop_run_one_at_a_time_per_user(tmp_path, tiny_parts):
    from engine.errors import UserError
    from tests.harness import make_config, running_stack
    from tests.test_core import RecordingUI, request

    config = make_config(tmp_path)
    async with running_stack(config, tiny_parts) as stack:
        sub = await stack.core.submit(request())
        await asyncio.wait_for(stack.core.follow(sub.job, RecordingUI(), sub.hints), 60)
        outcomes = await asyncio.gather(
            stack.core.on_button("smooth", sub.job.id, "test", "1", "en"),
            stack.core.on_button("smooth", sub.job.id, "test", "1", "en"), return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, UserError)]
        [(_, smoothed)] = [o for o in outcomes if not isinstance(o, BaseException)]
        assert [r.key for r in refused] == ["edit_busy"]
        assert smoothed.state == JobState.DONE and probe_mp4(smoothed.result_path)["frames"] == 10
        # Someone else is not held up by it, and the same user can go on once it is done.
        _, looped = await stack.core.on_button("loop", smoothed.id, "test", "1", "en")
        assert probe_mp4(looped.result_path)["frames"] == 18   # smooth (10) then loop: 2 * 9
        assert [b.action for b in stack.core.result_buttons(looped, "en", expanded=True)][3:] == ["report", "delete", "info"]
