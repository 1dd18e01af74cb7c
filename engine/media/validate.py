"""Input checks shared by the CLI and the chat bots: uploads, images and prompts.

Every refusal is a `UserError` with one sentence the user can act on, a stable `key` for translation and
the numbers in `params`. Only Pillow is imported here, so a refusal never waits for torch or numpy.
"""

from __future__ import annotations

import io
import re
import threading
import unicodedata
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from engine.errors import UserError

ACCEPTED = "JPEG, PNG, WebP or GIF"
_PIL_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")  # the only decoders Pillow may try: a small attack surface

_ALLOWED_TYPES = {
    "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/pjpeg": "JPEG",
    "image/png": "PNG", "image/x-png": "PNG", "image/apng": "PNG",
    "image/webp": "WebP", "image/gif": "GIF",
}
_UNSUPPORTED_TYPES = {
    "image/heic": "HEIC", "image/heif": "HEIF", "image/heic-sequence": "HEIC", "image/heif-sequence": "HEIF",
    "image/avif": "AVIF", "image/svg+xml": "SVG", "image/bmp": "BMP", "image/x-bmp": "BMP",
    "image/x-ms-bmp": "BMP", "image/tiff": "TIFF", "image/x-icon": "ICO", "image/vnd.microsoft.icon": "ICO",
    "image/jxl": "JPEG XL", "image/jp2": "JPEG 2000", "image/vnd.adobe.photoshop": "PSD",
    "application/pdf": "PDF",
}
_EXTENSIONS = {
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "jfif": "image/jpeg", "png": "image/png", "webp": "image/webp",
    "gif": "image/gif", "heic": "image/heic", "heif": "image/heif", "avif": "image/avif",
    "svg": "image/svg+xml", "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff",
    "ico": "image/x-icon", "jxl": "image/jxl", "jp2": "image/jp2", "psd": "image/vnd.adobe.photoshop",
    "pdf": "application/pdf",
}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"heif"}
_AVIF_BRANDS = {b"avif", b"avis"}

# Our own pixel check is the one that counts, so Pillow's bomb warning is silenced while the header is
# parsed. catch_warnings changes process-wide state, hence the lock (held only for the header parse).
_open_lock = threading.Lock()


# ---------------------------------------------------------------- helpers


def _size_text(n: int, digits: int = 1) -> str:
    if n < 1000:
        return f"{n} bytes"
    unit, div = ("KB", 1_000) if n < 1_000_000 else ("MB", 1_000_000)
    return f"{n / div:.{digits}f}".rstrip("0").rstrip(".") + f" {unit}"


def _distinct_sizes(actual: int, limit: int) -> tuple[str, str]:
    """Both sizes, with just enough digits that an image one byte over the limit does not read as equal."""
    for digits in range(1, 7):
        a, b = _size_text(actual, digits), _size_text(limit, digits)
        if a != b:
            return a, b
    return f"{actual} bytes", f"{limit} bytes"


def _megapixels(n: int) -> str:
    if n >= 100_000_000:
        return str(round(n / 1_000_000))
    return f"{n / 1_000_000:.1f}".removesuffix(".0")


def _too_large_bytes(actual: int, limit: int) -> UserError:
    shown, cap = _distinct_sizes(actual, limit)
    return UserError(
        f"The image is {shown}, over the {cap} limit; please send a smaller file.",
        "image_too_large_bytes", limit=limit, actual=actual,
    )


def _unsupported(fmt: str) -> UserError:
    return UserError(
        f"{fmt} files are not supported; please send a {ACCEPTED} image.",
        "unsupported_format", format=fmt, accepted=ACCEPTED,
    )


def _not_an_image(what: str = "This file is not an image") -> UserError:
    return UserError(f"{what}; please send a {ACCEPTED} image.", "not_an_image", accepted=ACCEPTED, what=what)


def _empty_file() -> UserError:
    return UserError(f"The file is empty; please send a {ACCEPTED} image.", "empty_file", accepted=ACCEPTED)


def _corrupt(fmt: str) -> UserError:
    return UserError(
        "The image file is damaged or incomplete; please send it again or try another image.",
        "corrupt_image", format=fmt,
    )


def _too_many_pixels(limit: int, actual: int, width: int | None = None, height: int | None = None) -> UserError:
    size = f"{width}x{height} pixels" if width and height else f"{_megapixels(actual)} megapixels"
    return UserError(
        f"The image is {size}, over the limit of {_megapixels(limit)} megapixels; please send a smaller one.",
        "image_too_many_pixels", limit=limit, actual=actual, width=width, height=height,
    )


# ---------------------------------------------------------------- upload metadata


def _media_type(content_type: str | None, filename: str | None) -> str | None:
    media = (content_type or "").split(";")[0].strip().lower()
    if media and media not in ("application/octet-stream", "binary/octet-stream"):
        return media
    if filename and "." in filename:
        return _EXTENSIONS.get(filename.rsplit(".", 1)[1].strip().lower())
    return None


def check_upload(content_type: str | None, size: int | None, filename: str | None, max_bytes: int) -> None:
    """Refuse an attachment from its chat metadata alone, before downloading it.

    Unknown metadata passes: `load_image` checks the bytes themselves.
    """
    media = _media_type(content_type, filename)
    if media is not None and media not in _ALLOWED_TYPES:
        if media in _UNSUPPORTED_TYPES:
            raise _unsupported(_UNSUPPORTED_TYPES[media])
        if media.startswith("video/"):
            raise _not_an_image("This is a video, not a still image")
        if not media.startswith("image/"):
            raise _not_an_image()
        raise _unsupported(media.split("/", 1)[1].upper())
    if size is not None:
        if size == 0:
            raise _empty_file()
        if size > max_bytes:
            raise _too_large_bytes(size, max_bytes)


async def read_capped(chunks: AsyncIterator[bytes] | AsyncIterable[bytes], max_bytes: int) -> bytes:
    """Join streamed chunks, stopping (and closing the stream) as soon as more than `max_bytes` arrived.

    The refusal's `actual` is the bytes received so far (a lower bound), with `partial=True`.
    """
    iterator = aiter(chunks)
    buf = bytearray()
    try:
        async for chunk in iterator:
            buf += chunk
            if len(buf) > max_bytes:
                raise UserError(
                    f"The image is over the {_size_text(max_bytes)} limit; please send a smaller file.",
                    "image_too_large_bytes", limit=max_bytes, actual=len(buf), partial=True,
                )
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
    return bytes(buf)


# ---------------------------------------------------------------- image bytes


def _sniff(data: bytes) -> str:
    """The format named by the file's first bytes: one of _PIL_FORMATS, or raise a clear refusal."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        box_end = min(len(head), int.from_bytes(head[:4], "big"))
        brands = {head[i:i + 4] for i in range(8, box_end - 3, 4)}
        if brands & _AVIF_BRANDS:
            raise _unsupported("AVIF")
        if brands & _HEIF_BRANDS:
            raise _unsupported("HEIC")
        raise _not_an_image("This is a video, not a still image")
    for magic, name in (
        (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"%PDF", "PDF"), (b"8BPS", "PSD"),
        (b"\x00\x00\x01\x00", "ICO"), (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
        (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    ):
        if head.startswith(magic):
            raise _unsupported(name)
    text = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in text and (text.startswith(b"<?xml") or text.startswith(b"<svg") or text.startswith(b"<!")):
        raise _unsupported("SVG")
    raise _not_an_image()


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def _bomb_refusal(exc: Exception, max_pixels: int) -> UserError:
    match = _BOMB_PIXELS.search(str(exc))
    return _too_many_pixels(max_pixels, int(match.group(1)) if match else 0)


def _open_header(data: bytes, fmt: str, max_pixels: int) -> Image.Image:
    """Parse only the header; Pillow's own bomb limits count as a pixel refusal."""
    try:
        with _open_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_refusal(exc, max_pixels) from None
    except Exception as exc:  # malformed headers surface as many exception types in Pillow's plugins
        raise _corrupt(fmt) from exc


def _check_dimensions(img: Image.Image, *, max_pixels: int, min_side: int) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise _too_many_pixels(max_pixels, width * height, width, height)
    if min(width, height) < min_side:
        raise UserError(
            f"The image is {width}x{height} pixels; each side must be at least {min_side} pixels.",
            "image_too_small", limit=min_side, actual=min(width, height), width=width, height=height,
        )


def _decode(img: Image.Image, fmt: str, max_pixels: int) -> None:
    """Decode the pixels of the first frame (an animation opens on it)."""
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_refusal(exc, max_pixels) from None
    except Exception as exc:  # truncated or corrupt data, whatever the plugin raises for it
        raise _corrupt(fmt) from exc


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the pixels as stored rather than refusing."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # any EXIF parse failure: keep the image unrotated
        return img


def _band_max(img: Image.Image) -> float:
    """The largest pixel value of a single-band image."""
    hi = img.getextrema()[1]
    assert not isinstance(hi, tuple)  # one band: (min, max), not a pair per band
    return hi


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit and float greyscale to 8-bit: scale instead of Pillow's clipping (which turns most pixels white)."""
    if img.mode == "F":
        hi = _band_max(img)
        scale = 255.0 if hi <= 1.0 else 255.0 / 65535.0
        return img.point(lambda v: v * scale).convert("L")
    as_int = img.convert("I")
    hi = _band_max(as_int)
    if hi <= 255:
        return as_int.convert("L")
    return as_int.point(lambda v: v / 257.0).convert("L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded mode to RGB; transparency is flattened onto white."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _high_depth_to_l(img)
    has_alpha = img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(data: bytes, *, max_bytes: int, max_pixels: int, min_side: int) -> Image.Image:
    """Decode an uploaded image to upright RGB, refusing anything unsafe or unusable with a UserError.

    Accepts JPEG, PNG, WebP and GIF (first frame). Size limits are read from the header before any pixel
    is decoded, so a decompression bomb costs milliseconds.
    """
    if not data:
        raise _empty_file()
    if len(data) > max_bytes:
        raise _too_large_bytes(len(data), max_bytes)
    fmt = _sniff(data)
    img = _open_header(data, fmt, max_pixels)
    _check_dimensions(img, max_pixels=max_pixels, min_side=min_side)
    _decode(img, fmt, max_pixels)
    try:
        return _to_rgb(_upright(img))
    except Exception as exc:  # a mode Pillow cannot convert means a file we cannot use
        raise _corrupt(fmt) from exc


def load_image_file(path: str | Path, *, max_bytes: int, max_pixels: int, min_side: int) -> Image.Image:
    """`load_image` for a file on disk; the byte cap is checked from the file size before reading."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise UserError(f"Not an image file: {p}", "not_a_file", path=str(p))
        if size > max_bytes:
            raise _too_large_bytes(size, max_bytes)
        data = p.read_bytes()
    except FileNotFoundError:
        raise UserError(f"Image file not found: {p}", "file_not_found", path=str(p)) from None
    except PermissionError:
        raise UserError(f"Image file cannot be read (permission denied): {p}", "file_unreadable",
                        path=str(p)) from None
    return load_image(data, max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side)


# ---------------------------------------------------------------- prompts

# Bidirectional embedding/override/isolate controls can make an echoed prompt display in a misleading
# order; plain right-to-left text and the LRM/RLM marks are kept.
_BIDI_CONTROLS = {*range(0x202A, 0x202F), *range(0x2066, 0x206A)}
_WHITESPACE = re.compile(r"\s+")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")  # terminal colour codes pasted from a shell


def _clean_prompt(text: str) -> str:
    text = _ANSI_ESCAPE.sub("", unicodedata.normalize("NFC", text))
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch.isspace():
            kept.append(" ")
        elif cat in ("Cc", "Cs") or ord(ch) in _BIDI_CONTROLS or ch == "\ufeff":
            continue
        else:
            kept.append(ch)
    return _WHITESPACE.sub(" ", "".join(kept)).strip()


def _fold(text: str) -> str:
    """Fullwidth letters, ligatures and case all compare equal."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


@lru_cache(maxsize=64)
def _blocked_pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    folded = sorted({_fold(w) for w in words} - {""}, key=len, reverse=True)
    if not folded:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in folded) + r")(?!\w)")


def check_prompt(text: str | None, *, max_chars: int, blocked_words: Iterable[str] = ()) -> str:
    """Return the cleaned prompt (control characters removed, whitespace collapsed) or refuse it."""
    cleaned = _clean_prompt(text or "")
    if not cleaned:
        raise UserError(
            "The prompt is empty; please describe what should happen in the video.", "empty_prompt",
        )
    if len(cleaned) > max_chars:
        raise UserError(
            f"The prompt is {len(cleaned)} characters long, over the {max_chars}-character limit; "
            "please shorten it.",
            "prompt_too_long", limit=max_chars, actual=len(cleaned),
        )
    pattern = _blocked_pattern(tuple(blocked_words))
    if pattern is not None and pattern.search(_fold(cleaned)):
        raise UserError(
            "The prompt contains a word that is not allowed here; please rephrase it.", "prompt_blocked_word",
        )
    return cleaned


# ---------------------------------------------------------------- config


def _limits_section(cfg: Any) -> Any:
    return getattr(cfg, "limits", cfg)


def limits_from_config(cfg: Any) -> dict[str, int]:
    """Keyword arguments for `load_image` / `load_image_file` from a Config (or its `limits` section)."""
    limits = _limits_section(cfg)
    return {
        "max_bytes": int(limits.max_image_bytes),
        "max_pixels": int(limits.max_image_pixels),
        "min_side": int(limits.min_image_side),
    }


def prompt_limits_from_config(cfg: Any, scope: str | int | None = None) -> dict[str, Any]:
    """Keyword arguments for `check_prompt`: global blocked words plus those of one server/chat id."""
    limits = _limits_section(cfg)
    words = list(limits.blocked_words)
    if scope is not None:
        words += list(limits.words.get(str(scope), ()))
    return {"max_chars": int(limits.max_prompt_chars), "blocked_words": tuple(words)}
