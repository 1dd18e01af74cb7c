"""MP4 encoding and inspection with the ffmpeg binary shipped by imageio-ffmpeg (no torch here).

Videos are H.264 High, yuv420p, BT.709-tagged, with the index at the front (`+faststart`) so chat clients
can start playing before the download ends. Every file is written to a temporary name in its folder and
renamed into place, so a crash or a full disk never leaves a half-written video under the final name.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

from engine.errors import UserError

FFMPEG_TIMEOUT_S = 300

# The RGB -> YUV matrix is named explicitly (not left to ffmpeg's default, which has changed between
# versions) and the stream is tagged to match, so players convert back with the same matrix.
_RGB_TO_YUV = (
    "setparams=color_primaries=bt709:color_trc=bt709,"
    "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p"
)
_COLOR_TAGS = ("-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv")

# fit_to_size: quality ladders per scale; only the last scale may go to very high CRFs.
_FIT_SCALES = (1.0, 0.75, 0.5, 0.375, 0.25)
_FIT_CRFS = (23, 26, 29, 32, 35, 38)
_FIT_LAST_CRFS = (*_FIT_CRFS, 42, 46, 51)
_FIT_MIN_SIDE = 32
_FIT_PRESET = "veryfast"

_ERRNO_HINTS = (
    ("No space left on device", errno.ENOSPC),
    ("Disk quota exceeded", errno.EDQUOT),
    ("File too large", errno.EFBIG),
    ("Read-only file system", errno.EROFS),
    ("Permission denied", errno.EACCES),
    ("No such file or directory", errno.ENOENT),
)


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# ---------------------------------------------------------------- running ffmpeg


def _failure(proc: subprocess.CompletedProcess, what: str) -> OSError:
    """An OSError whose errno says why ffmpeg failed when its message or signal tells us."""
    text = proc.stderr.decode("utf-8", "replace") if proc.stderr else ""
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
    if proc.returncode < 0:
        signum = -proc.returncode
        code = errno.EFBIG if signum == signal.SIGXFSZ else errno.EIO  # SIGXFSZ: file size limit hit
        return OSError(code, f"ffmpeg {what} was killed by signal {signum}: {tail}")
    code = next((c for hint, c in _ERRNO_HINTS if hint in text), errno.EIO)
    return OSError(code, f"ffmpeg {what} failed (exit {proc.returncode}): {tail}")


def _run(args: list[str], what: str, stdin: bytes | memoryview | None = None) -> subprocess.CompletedProcess:
    # -y: the output is always our own temporary file, created empty beforehand.
    cmd = [ffmpeg_exe(), "-hide_banner", "-y", *(["-nostdin"] if stdin is None else []), *args]
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise OSError(errno.ETIMEDOUT, f"ffmpeg {what} took longer than {FFMPEG_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise _failure(proc, what)
    return proc


@contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary file beside `path`; on success it replaces `path`, on any failure it is removed."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    # os.open rather than mkstemp: mkstemp's 0600 would survive the rename and hide the video from
    # other users (a web server, a bot running as another account); 0666 lets the umask decide.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _x264_output(crf: int, preset: str, target: Path) -> list[str]:
    return [
        "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p", *_COLOR_TAGS,
        "-movflags", "+faststart", "-an", "-f", "mp4", f"file:{target}",
    ]


# ---------------------------------------------------------------- writing


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be an array of shape (F, H, W, 3), got {getattr(frames, 'shape', None)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"frames must not be empty, got shape {frames.shape}")


def even_frames(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: repeat the last row/column of an odd-sized frame (nothing is cut off)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def write_mp4(frames: np.ndarray, path: str | Path, fps: int, crf: int = 18, preset: str = "veryfast") -> Path:
    """Encode (F, H, W, 3) uint8 RGB frames to an H.264 MP4 at `path`, atomically. OSErrors propagate."""
    _check_frames(frames)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    frames = np.ascontiguousarray(even_frames(frames))
    _, height, width, _ = frames.shape
    path = Path(path)
    with _atomic_target(path) as tmp:
        _run(
            [
                "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
                "-framerate", str(fps), "-i", "pipe:0", "-vf", _RGB_TO_YUV, *_x264_output(crf, preset, tmp),
            ],
            "encode",
            stdin=frames.data.cast("B"),
        )
    return path


# ---------------------------------------------------------------- reading


def _split_top_level(text: str) -> list[str]:
    """Split ffmpeg's stream description on commas outside parentheses and brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _parse_video_stream(line: str) -> dict:
    """Fields of an ffmpeg 'Stream #0:0...: Video: h264 (High) (...), yuv420p(tv, bt709), 512x512, ...' line."""
    parts = _split_top_level(line.split("Video:", 1)[1])
    pix_fmt = re.match(r"[\w]+", parts[1])
    if pix_fmt is None:
        raise ValueError(f"unreadable ffmpeg stream line: {line!r}")
    info: dict = {"codec": parts[0].split()[0], "pix_fmt": pix_fmt.group(0)}
    for part in parts[2:]:
        if "width" not in info and (m := re.match(r"(\d+)x(\d+)", part)):
            info["width"], info["height"] = int(m.group(1)), int(m.group(2))
        elif m := re.fullmatch(r"([\d.]+)(k?) fps", part):
            info["fps"] = float(m.group(1)) * (1000 if m.group(2) else 1)
    return info


def _video_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.match(r"\s*Stream #\d+:\d+.*: Video:", line)]


def _duration_s(stderr: str) -> float | None:
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", stderr)
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else None


def top_level_boxes(path: str | Path) -> list[str]:
    """The MP4's top-level box types in file order (read from box headers only)."""
    types: list[str] = []
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + 8 <= end and len(types) < 1000:
            f.seek(pos)
            header = f.read(16)
            size, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if size == 1:
                size = int.from_bytes(header[8:16], "big")
            elif size == 0:
                size = end - pos
            if size < 8:
                break
            types.append(kind)
            pos += size
    return types


def probe_mp4(path: str | Path) -> dict:
    """frames, fps, width, height, codec, pix_fmt, duration_s, faststart and size_bytes of a video file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "No such video file", str(path))
    # Copying the stream to the null muxer counts packets without decoding a single frame.
    proc = _run(["-stats", "-i", f"file:{path}", "-map", "0:v:0", "-c", "copy", "-f", "null", "-"], "probe")
    stderr = proc.stderr.decode("utf-8", "replace")
    lines = _video_lines(stderr)
    if not lines:
        raise ValueError(f"{path} has no video stream")
    info = _parse_video_stream(lines[0])
    counts = re.findall(r"frame=\s*(\d+)", stderr)
    boxes = top_level_boxes(path)
    info.update(
        frames=int(counts[-1]) if counts else None,
        duration_s=_duration_s(stderr),
        faststart="moov" in boxes and "mdat" in boxes and boxes.index("moov") < boxes.index("mdat"),
        size_bytes=path.stat().st_size,
    )
    return info


def read_mp4_frames(path: str | Path) -> np.ndarray:
    """Decode every frame of the first video stream to an (F, H, W, 3) uint8 RGB array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "No such video file", str(path))
    proc = _run(
        ["-i", f"file:{path}", "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "rawvideo",
         "-pix_fmt", "rgb24", "pipe:1"],
        "decode",
    )
    lines = _video_lines(proc.stderr.decode("utf-8", "replace"))
    out = _parse_video_stream(lines[-1])  # the output stream: its size after any scaling
    width, height = out["width"], out["height"]
    data = np.frombuffer(proc.stdout, dtype=np.uint8)
    return data.reshape(-1, height, width, 3)


def read_first_frame(path: str | Path) -> np.ndarray:
    """The first frame of a video as an (H, W, 3) uint8 RGB array, decoding nothing after it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "No such video file", str(path))
    proc = _run(["-i", f"file:{path}", "-map", "0:v:0", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24",
                 "pipe:1"], "decode")
    out = _parse_video_stream(_video_lines(proc.stderr.decode("utf-8", "replace"))[-1])
    return np.frombuffer(proc.stdout, dtype=np.uint8).reshape(out["height"], out["width"], 3)


# ---------------------------------------------------------------- fitting a size cap


def _reencode(src: Path, dst: Path, crf: int, width: int, height: int, scale_needed: bool) -> int:
    vf = f"scale={width}:{height}:flags=lanczos,format=yuv420p" if scale_needed else "format=yuv420p"
    with _atomic_target(dst) as tmp:
        _run(
            ["-loglevel", "error", "-i", f"file:{src}", "-map", "0:v:0", "-fps_mode", "passthrough",
             "-vf", vf, *_x264_output(crf, _FIT_PRESET, tmp)],
            "re-encode",
        )
    return dst.stat().st_size


def _scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _fit_at_scale(src: Path, dst: Path, max_bytes: int, size: tuple[int, int], scaled: bool,
                  crfs: tuple[int, ...]) -> bool:
    """Leave at `dst` the best-quality encode from `crfs` that fits, by binary search; False if none fits."""
    if _reencode(src, dst, crfs[-1], *size, scaled) > max_bytes:
        return False
    lo, hi, in_dst = 0, len(crfs) - 1, len(crfs) - 1  # crfs[hi] fits; crfs[:lo] do not
    while lo < hi:
        mid = (lo + hi) // 2
        in_dst = mid
        if _reencode(src, dst, crfs[mid], *size, scaled) <= max_bytes:
            hi = mid
        else:
            lo = mid + 1
    if in_dst != hi:
        _reencode(src, dst, crfs[hi], *size, scaled)
    return True


def fit_to_size(path: str | Path, max_bytes: int, out_path: str | Path | None = None) -> Path:
    """Return a video no bigger than `max_bytes`: `path` itself when it fits, else a smaller re-encode.

    Quality goes first (higher CRF), then resolution. The re-encode goes to `out_path` (default
    `<stem>.fit.mp4` beside the source, which is never modified). Raises UserError "video_too_large"
    when even the smallest encode is over the cap.
    """
    path = Path(path)
    actual = path.stat().st_size
    if actual <= max_bytes:
        return path
    out = Path(out_path) if out_path is not None else path.with_name(f"{path.stem}.fit{path.suffix}")
    info = probe_mp4(path)
    source = (info["width"], info["height"])
    for i, scale in enumerate(_FIT_SCALES):
        size = _scaled_size(*source, scale)
        last = i == len(_FIT_SCALES) - 1 or min(_scaled_size(*source, _FIT_SCALES[i + 1])) < _FIT_MIN_SIDE
        if _fit_at_scale(path, out, max_bytes, size, size != source, _FIT_LAST_CRFS if last else _FIT_CRFS):
            return out
        if last:
            break
    out.unlink(missing_ok=True)
    cap = f"{max_bytes / 1_000_000:.1f} MB" if max_bytes >= 100_000 else f"{max_bytes} bytes"
    raise UserError(
        f"The video is too large to send here, even at lower quality (the limit is {cap}).",
        "video_too_large", limit=max_bytes, actual=actual,
    )
