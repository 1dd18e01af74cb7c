"""engine.media.video: real MP4s written with the shipped ffmpeg, decoded back and inspected box by box."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.errors import UserError
from engine.media.video import (
    even_frames,
    ffmpeg_exe,
    fit_to_size,
    probe_mp4,
    read_mp4_frames,
    top_level_boxes,
    write_mp4,
)


def smooth_frames(count: int = 16, height: int = 128, width: int = 160) -> np.ndarray:
    """Colour gradients drifting a few pixels per frame, like a slow camera pan."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(count):
        r = 128 + 100 * np.sin((x + 3 * t) / 23.0)
        g = 128 + 100 * np.cos((y - 2 * t) / 19.0)
        b = 128 + 90 * np.sin((x + y + 4 * t) / 31.0)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def noise_frames(count: int, height: int, width: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- writing and reading back


def test_round_trip(tmp_path):
    frames = smooth_frames()
    out = write_mp4(frames, tmp_path / "clip.mp4", fps=8)
    assert out == tmp_path / "clip.mp4"
    info = probe_mp4(out)
    assert info["frames"] == 16 and info["fps"] == 8
    assert (info["width"], info["height"]) == (160, 128)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["faststart"] is True
    assert info["duration_s"] == pytest.approx(2.0, abs=0.01)
    assert info["size_bytes"] == out.stat().st_size
    decoded = read_mp4_frames(out)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert psnr(decoded, frames) >= 30
    # frames stay in order: each decoded frame is closest to its own source frame
    for i in (0, 7, 15):
        errors = [np.mean(np.abs(decoded[i].astype(int) - f)) for f in frames]
        assert int(np.argmin(errors)) == i
    assert leftovers(tmp_path) == ["clip.mp4"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_colours_survive_the_yuv_round_trip(tmp_path):
    colours = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (128, 128, 128)], np.uint8)
    frames = np.repeat(colours[:, None, None, :], 64, axis=1).repeat(64, axis=2)
    decoded = read_mp4_frames(write_mp4(frames, tmp_path / "c.mp4", fps=5))
    centre = decoded[:, 32, 32].astype(int)
    assert np.abs(centre - colours).max() <= 6, centre


@pytest.mark.parametrize("fps", [1, 12, 24, 30])
def test_fps_is_kept(tmp_path, fps):
    info = probe_mp4(write_mp4(smooth_frames(count=6, height=64, width=64), tmp_path / "f.mp4", fps=fps))
    assert info["fps"] == fps and info["frames"] == 6
    assert info["duration_s"] == pytest.approx(6 / fps, abs=0.02)


@pytest.mark.parametrize(("height", "width"), [(65, 97), (64, 97), (65, 96), (1, 1)])
def test_odd_sizes_are_padded_to_even(tmp_path, height, width):
    frames = smooth_frames(count=4, height=height, width=width)
    out = write_mp4(frames, tmp_path / "odd.mp4", fps=8)
    info = probe_mp4(out)
    assert (info["width"], info["height"]) == (width + width % 2, height + height % 2)
    decoded = read_mp4_frames(out)
    if min(height, width) >= 16:
        assert psnr(decoded[:, :height, :width], frames) >= 30


def test_even_frames_repeats_the_edge():
    frames = np.arange(1 * 3 * 3 * 3, dtype=np.uint8).reshape(1, 3, 3, 3)
    padded = even_frames(frames)
    assert padded.shape == (1, 4, 4, 3)
    assert np.array_equal(padded[:, 3, :3], frames[:, 2]) and np.array_equal(
        padded[:, :3, 3], frames[:, :, 2]
    )
    even = np.zeros((2, 4, 6, 3), np.uint8)
    assert even_frames(even) is even


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((4, 32, 32), np.uint8),
        np.zeros((4, 32, 32, 4), np.uint8),
        np.zeros((4, 32, 32, 3), np.float32),
        np.zeros((0, 32, 32, 3), np.uint8),
    ],
)
def test_bad_frames_are_refused(tmp_path, frames):
    with pytest.raises(ValueError):
        write_mp4(frames, tmp_path / "bad.mp4", fps=8)
    assert leftovers(tmp_path) == []


def test_overwrites_an_existing_file(tmp_path):
    target = tmp_path / "v.mp4"
    target.write_bytes(b"old")
    write_mp4(smooth_frames(count=3, height=32, width=32), target, fps=8)
    assert probe_mp4(target)["frames"] == 3
    assert leftovers(tmp_path) == ["v.mp4"]


# ---------------------------------------------------------------- probing


def test_faststart_check_reads_the_boxes(tmp_path):
    """A file muxed without +faststart has mdat before moov, and probe_mp4 must say so."""
    src = write_mp4(smooth_frames(count=4, height=64, width=64), tmp_path / "a.mp4", fps=8)
    slow = tmp_path / "slow.mp4"
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(src), "-c", "copy", str(slow)],
        check=True,
    )
    assert top_level_boxes(slow).index("mdat") < top_level_boxes(slow).index("moov")
    assert probe_mp4(slow)["faststart"] is False
    assert top_level_boxes(src)[:1] == ["ftyp"] and probe_mp4(src)["faststart"] is True


def test_probe_refuses_what_is_not_a_video(tmp_path):
    with pytest.raises(FileNotFoundError):
        probe_mp4(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(OSError):
        probe_mp4(junk)


# ---------------------------------------------------------------- fitting a size cap


def test_fit_to_size_returns_a_fitting_file_unchanged(tmp_path):
    src = write_mp4(smooth_frames(count=4, height=64, width=64), tmp_path / "s.mp4", fps=8)
    before = src.read_bytes()
    assert fit_to_size(src, src.stat().st_size) == src
    assert src.read_bytes() == before and leftovers(tmp_path) == ["s.mp4"]


def test_fit_to_size_shrinks_under_the_cap(tmp_path):
    src = write_mp4(noise_frames(8, 128, 128), tmp_path / "big.mp4", fps=8)
    original = src.read_bytes()
    cap = len(original) // 6
    out = fit_to_size(src, cap)
    assert out != src and out.stat().st_size <= cap
    info = probe_mp4(out)
    assert info["frames"] == 8 and info["fps"] == 8
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p" and info["faststart"]
    assert src.read_bytes() == original  # the source is never touched
    named = fit_to_size(src, cap, out_path=tmp_path / "named.mp4")
    assert named == tmp_path / "named.mp4" and named.stat().st_size <= cap
    assert not [n for n in leftovers(tmp_path) if n.endswith(".part")]


def test_fit_to_size_prefers_quality_loss_over_resolution_loss(tmp_path):
    src = write_mp4(smooth_frames(count=8, height=128, width=160), tmp_path / "s.mp4", fps=8, crf=0)
    mild = fit_to_size(src, src.stat().st_size // 3)
    assert (probe_mp4(mild)["width"], probe_mp4(mild)["height"]) == (160, 128)


def test_fit_to_size_refuses_an_impossible_cap(tmp_path):
    src = write_mp4(noise_frames(4, 64, 64), tmp_path / "v.mp4", fps=8)
    with pytest.raises(UserError) as info:
        fit_to_size(src, 500)
    assert info.value.key == "video_too_large"
    assert info.value.params == {"limit": 500, "actual": src.stat().st_size}
    message = str(info.value)
    assert "\n" not in message and message.endswith(".") and len(message) < 200
    assert leftovers(tmp_path) == ["v.mp4"]


# ---------------------------------------------------------------- atomic writes


def test_missing_folder_raises_and_leaves_nothing(tmp_path):
    folder = tmp_path / "gone"
    folder.mkdir()
    shutil.rmtree(folder)
    with pytest.raises(FileNotFoundError):
        write_mp4(smooth_frames(count=2, height=32, width=32), folder / "v.mp4", fps=8)
    assert not folder.exists() and leftovers(tmp_path) == []


def test_disk_full_mid_write_keeps_the_old_file_and_no_partial(tmp_path):
    """A file-size limit makes every write past 64 KiB fail, as a full disk would, in the ffmpeg child."""
    target = tmp_path / "v.mp4"
    target.write_bytes(b"previous video")
    frames = noise_frames(16, 256, 256)  # far more than 64 KiB once encoded
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OSError) as info:
            write_mp4(frames, target, fps=8)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert info.value.errno in (errno.EFBIG, errno.ENOSPC)
    assert target.read_bytes() == b"previous video"
    assert leftovers(tmp_path) == ["v.mp4"]


def test_failed_rename_removes_the_temporary_file(tmp_path):
    """The target is a non-empty folder, so the final rename fails after a complete encode."""
    target = tmp_path / "v.mp4"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        write_mp4(smooth_frames(count=2, height=32, width=32), target, fps=8)
    assert leftovers(tmp_path) == ["v.mp4"] and os.listdir(target) == ["keep"]
