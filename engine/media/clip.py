"""Edits of a rendered clip, on the CPU and torch-free: smooth (interpolated to 24 fps), loop (ping-pong) and
join (an extension after its clip).

Smoothing is ffmpeg's `minterpolate` (motion-compensated), from the ffmpeg that imageio-ffmpeg ships, with
bilateral motion estimation and overlapped-block compensation: against frames rendered at 24 fps it came closest
and cost least of the settings tried (docs/PERFORMANCE.md, "Clip edits"; scripts/bench_smooth.py). Its blending
sibling `framerate` costs a tenth as much but shows every moving edge twice, so it is kept only for the bench.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engine.media.video import _run, even_frames

if TYPE_CHECKING:
    from engine.jobs import Job
    from engine.presets import Preset

SMOOTH_FPS = 24
FILTERS = {
    "minterpolate": "minterpolate=fps={fps}:mi_mode=mci:mc_mode=obmc:me_mode=bilat:vsbmc=0",
    "minterpolate-bidir": "minterpolate=fps={fps}:mi_mode=mci:mc_mode=aobmc:me_mode=bidir:vsbmc=1",
    "framerate": "framerate=fps={fps}:interp_start=0:interp_end=255:scene=100",
}
DEFAULT_FILTER = "minterpolate"


def smooth_factor(fps: int) -> int:
    """How many output frames per input frame step: 8 fps -> 3 (24 fps); already 24 fps or more -> 1."""
    return max(1, round(SMOOTH_FPS / max(1, fps)))


def smooth(frames: np.ndarray, fps: int, method: str = DEFAULT_FILTER) -> tuple[np.ndarray, int]:
    """(frames, fps) interpolated to about 24 fps: n frames become f(n-1)+1 for the factor f, and output frame
    f*k is input frame k exactly."""
    factor = smooth_factor(fps)
    if factor == 1 or len(frames) < 2:
        return frames, fps
    count, (height, width) = factor * (len(frames) - 1) + 1, frames.shape[1:3]
    # The filter stops short of the last input frame's time: one repeated frame at the end lets it reach it.
    padded = np.ascontiguousarray(even_frames(np.concatenate([frames, frames[-1:]])))
    h, w = padded.shape[1:3]
    proc = _run(["-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
                 "-framerate", str(fps), "-i", "pipe:0", "-vf", FILTERS[method].format(fps=fps * factor),
                 "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"], "interpolate", stdin=padded.data.cast("B"))
    out = np.frombuffer(proc.stdout, np.uint8).reshape(-1, h, w, 3)[:count, :height, :width].copy()
    if len(out) < count:   # never seen; a short answer still gives a clip of the promised length
        out = np.concatenate([out, np.repeat(out[-1:], count - len(out), axis=0)])
    out[::factor] = frames   # the rendered frames themselves, not their trip through YUV
    return out, fps * factor


def loop(frames: np.ndarray) -> np.ndarray:
    """Forward, then backward without repeating either end: n frames become 2(n-1), frame k = frame n-k."""
    if len(frames) < 3:
        return frames
    return np.concatenate([frames, frames[-2:0:-1]])


def join(clip: np.ndarray, continuation: np.ndarray) -> np.ndarray:
    """A clip and its extension, which starts from the clip's last frame: that shared frame appears once."""
    if continuation.shape[1:3] != clip.shape[1:3]:   # an extension that fell back to a smaller preset
        from PIL import Image

        height, width = clip.shape[1:3]
        continuation = np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.LANCZOS))
                                 for f in continuation])
    return np.concatenate([clip, continuation[1:]])


def finish(frames: np.ndarray, fps: int, *, smooth_it: bool, loop_it: bool) -> tuple[np.ndarray, int]:
    """The delivered clip from the plain one: smooth first, then loop."""
    if smooth_it:
        frames, fps = smooth(frames, fps)
    if loop_it:
        frames = loop(frames)
    return frames, fps


def clip_edits(job: Job, preset: Preset) -> tuple[bool, bool]:
    """(smooth, loop) for a job: its own choice, else its preset's smooth; loop only when asked."""
    smooth = job.options.get("smooth")
    return (preset.smooth if smooth is None else bool(smooth)), bool(job.options.get("loop"))
