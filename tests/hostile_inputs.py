"""Hostile and awkward inputs, generated in code, for every test that takes an image or a prompt.

`image_corpus()` gives (name, bytes, expected UserError key or None when it must be accepted), checked with
`IMAGE_LIMITS`; `prompt_corpus()` gives (name, text, expected key or None), checked with `PROMPT_LIMITS`.
BMP and TIFF are refused as unsupported formats, like HEIC, AVIF, SVG and PDF.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from functools import lru_cache

from PIL import Image, features

IMAGE_LIMITS = {"max_bytes": 2_000_000, "max_pixels": 40_000_000, "min_side": 64}
PROMPT_LIMITS = {"max_chars": 500, "blocked_words": ("forbidden", "bad phrase")}

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# ---------------------------------------------------------------- builders


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(
    width: int, height: int, *, bit_depth: int = 8, color_type: int = 2, rows: bytes | None = None
) -> bytes:
    """A PNG written by hand: any header, valid CRCs, and only the pixel rows given (a tiny IDAT if none)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\x00")
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def zlib_bomb_png(width: int, height: int) -> bytes:
    """A real decompression bomb: all-black rows that deflate ~40:1, so a small file decodes to a huge image."""
    deflate = zlib.compressobj(1)
    row = b"\x00" * (width * 3 + 1)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _save(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def gradient(size: tuple[int, int] = (128, 96), mode: str = "RGB") -> Image.Image:
    w, h = size
    img = Image.new("RGB", size)
    img.putdata(
        [(x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), 128) for y in range(h) for x in range(w)]
    )
    return img.convert(mode)


def split_red_blue(size: tuple[int, int] = (200, 100)) -> Image.Image:
    """Left half red, right half blue: shows where a rotation put the left edge."""
    img = Image.new("RGB", size, BLUE)
    img.paste(RED, (0, 0, size[0] // 2, size[1]))
    return img


def exif_rotated_jpeg() -> bytes:
    """Stored 200x100 (red left, blue right) with orientation 6: shown 100x200 with red on top."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(split_red_blue(), "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (80, 80), color) for color in (RED, GREEN, BLUE)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def mpo_jpeg() -> bytes:
    """A two-picture MPO (phone depth/stereo shots): a JPEG whose first picture is the one wanted."""
    first, second = Image.new("RGB", (100, 80), RED), Image.new("RGB", (100, 80), BLUE)
    return _save(first, "MPO", save_all=True, append_images=[second])


def rgba_png() -> bytes:
    """Top half opaque green, bottom half fully transparent (must come out white)."""
    img = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    img.paste((0, 255, 0, 255), (0, 0, 96, 48))
    return _save(img, "PNG")


def palette_png(transparent: bool = False) -> bytes:
    img = Image.new("P", (96, 96), 0)
    img.putpalette([*RED, *GREEN, *BLUE] + [0] * (256 * 3 - 9))
    img.paste(1, (48, 0, 96, 96))
    params = {"transparency": 0} if transparent else {}
    return _save(img, "PNG", **params)


def png16_gray() -> bytes:
    """16-bit greyscale at half scale (0x8000): must come out mid grey, not clipped to white."""
    w, h = 80, 80
    row = b"\x00" + struct.pack(">H", 0x8000) * w
    return raw_png(w, h, bit_depth=16, color_type=0, rows=row * h)


def png16_rgb() -> bytes:
    w, h = 80, 80
    row = b"\x00" + struct.pack(">HHH", 0xFFFF, 0x8000, 0) * w
    return raw_png(w, h, bit_depth=16, color_type=2, rows=row * h)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def bad_crc_png() -> bytes:
    data = bytearray(_save(gradient(), "PNG"))
    data[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    return bytes(data)


def noise_png(side: int, seed: int = 7) -> bytes:
    """Incompressible pixels: a big file for a modest image, like a camera photo."""
    pixels = random.Random(seed).randbytes(side * side * 3)
    return _save(Image.frombytes("RGB", (side, side), pixels), "PNG", compress_level=1)


def gif_header(width: int, height: int) -> bytes:
    """A GIF whose logical screen is declared huge; a one-pixel frame follows."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b"\x3b"


def fake_heic() -> bytes:
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200


def avif() -> bytes:
    if features.check("avif"):
        return _save(gradient((64, 64)), "AVIF")
    return b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 200


SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512">'
    b'<rect width="512" height="512" fill="red"/></svg>\n'
)
MP4_HEADER = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + b"\x00" * 200


# ---------------------------------------------------------------- corpora


@lru_cache(maxsize=1)
def _image_cases() -> tuple[tuple[str, bytes, str | None], ...]:
    jpeg = _save(gradient(), "JPEG", quality=90)
    png = _save(gradient(), "PNG")
    return (
        # refused before decoding
        ("zero_bytes", b"", "empty_file"),
        ("text_file", b"hello, this is a plain text file\n" * 4, "not_an_image"),
        ("html_page", b"<!DOCTYPE html><html><body>not an image</body></html>", "not_an_image"),
        ("mp4_video", MP4_HEADER, "not_an_image"),
        ("random_bytes", random.Random(1).randbytes(4096), "not_an_image"),
        ("heic", fake_heic(), "unsupported_format"),
        ("avif", avif(), "unsupported_format"),
        ("svg", SVG, "unsupported_format"),
        ("pdf", _save(gradient(), "PDF"), "unsupported_format"),
        ("bmp", _save(gradient(), "BMP"), "unsupported_format"),
        ("tiff", _save(gradient(), "TIFF"), "unsupported_format"),
        ("huge_byte_size", noise_png(900), "image_too_large_bytes"),
        # refused from the header
        ("png_30000x30000_header", raw_png(30000, 30000), "image_too_many_pixels"),
        ("png_10000x10000_header", raw_png(10000, 10000), "image_too_many_pixels"),
        ("png_8000x6000_header", raw_png(8000, 6000), "image_too_many_pixels"),
        ("png_zlib_bomb_7000x6000", zlib_bomb_png(7000, 6000), "image_too_many_pixels"),
        ("gif_65535x65535_header", gif_header(65535, 65535), "image_too_many_pixels"),
        ("one_pixel", _save(Image.new("RGB", (1, 1), RED), "PNG"), "image_too_small"),
        ("thin_63px", _save(Image.new("RGB", (300, 63), RED), "PNG"), "image_too_small"),
        # refused while decoding
        ("truncated_jpeg", truncated(jpeg), "corrupt_image"),
        ("truncated_png", truncated(png), "corrupt_image"),
        ("jpeg_magic_then_garbage", b"\xff\xd8\xff\xe0" + random.Random(2).randbytes(2048), "corrupt_image"),
        ("png_bad_crc", bad_crc_png(), "corrupt_image"),
        ("png_header_without_pixels", raw_png(128, 128), "corrupt_image"),
        # accepted
        ("jpeg", jpeg, None),
        ("progressive_jpeg", _save(gradient(), "JPEG", progressive=True), None),
        ("png", png, None),
        ("exif_rotated_jpeg", exif_rotated_jpeg(), None),
        ("animated_gif", animated_gif(), None),
        ("mpo_two_pictures", mpo_jpeg(), None),
        ("cmyk_jpeg", _save(Image.new("CMYK", (96, 96), (0, 255, 255, 0)), "JPEG", quality=95), None),
        ("png_16bit_gray", png16_gray(), None),
        ("png_16bit_rgb", png16_rgb(), None),
        ("grayscale_jpeg", _save(gradient(mode="L"), "JPEG"), None),
        ("one_bit_png", _save(gradient(mode="1"), "PNG"), None),
        ("rgba_png", rgba_png(), None),
        ("gray_alpha_png", _save(gradient(mode="LA"), "PNG"), None),
        ("palette_png", palette_png(), None),
        ("palette_png_transparent", palette_png(transparent=True), None),
        ("webp", _save(gradient(), "WEBP", quality=90), None),
        ("webp_lossless_rgba", _save(gradient(mode="RGBA"), "WEBP", lossless=True), None),
        ("exactly_min_side", _save(Image.new("RGB", (64, 64), GREEN), "PNG"), None),
    )


def image_corpus() -> list[tuple[str, bytes, str | None]]:
    return list(_image_cases())


def prompt_corpus() -> list[tuple[str, str, str | None]]:
    return [
        ("none_like_empty", "", "empty_prompt"),
        ("whitespace_only", " \t\n\r\u00a0\u2003 ", "empty_prompt"),
        ("control_only", "\x00\x07\x1b\x7f", "empty_prompt"),
        ("zero_width_and_bidi_only", "\u202e\u2066\ufeff", "empty_prompt"),
        ("ten_thousand_chars", "a" * 10_000, "prompt_too_long"),
        ("one_over_limit", "b" * 501, "prompt_too_long"),
        ("exactly_at_limit", "c" * 500, None),
        ("long_only_in_whitespace", "dog " + " " * 2000 + "runs", None),
        ("plain", "a cat walking on the beach at sunset", None),
        ("control_characters_inside", "a cat\x00 walking\x1b[31m\x07 slowly", None),
        ("newlines_and_tabs", "line one\nline two\r\n\tline three", None),
        ("markdown", "**bold** _italic_ `code` ~~strike~~ [link](https://example.com) > quote", None),
        ("everyone_mention", "@everyone look at this cat", None),
        ("role_and_user_mentions", "<@&123> and <@456> and <#789> dancing", None),
        ("arabic_rtl", "قطة تمشي على الشاطئ", None),
        ("hebrew_rtl_with_marks", "\u200fחתול הולך על החוף\u200f", None),
        ("bidi_override_inside", "a cat \u202eevil\u202c on a roof", None),
        ("emoji", "🐱 walking 🌅 with a family 👨\u200d👩\u200d👧", None),
        ("chinese", "一只猫在海滩上行走，夕阳西下", None),
        ("lone_surrogate", "a cat \ud800 jumping", None),
        ("blocked_word", "a FORBIDDEN cat", "prompt_blocked_word"),
        ("blocked_word_with_punctuation", "cat, forbidden.", "prompt_blocked_word"),
        ("blocked_word_fullwidth", "a ｆｏｒｂｉｄｄｅｎ cat", "prompt_blocked_word"),
        ("blocked_phrase_spread_out", "a Bad \n  Phrase here", "prompt_blocked_word"),
        ("blocked_word_inside_longer_word", "the forbiddenness of it", None),
    ]
