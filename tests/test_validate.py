"""engine.media.validate against the hostile corpus: every refusal is one clear sentence with a stable key."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from engine.config import parse_config
from engine.errors import UserError
from engine.media.validate import (
    check_prompt,
    check_upload,
    limits_from_config,
    load_image,
    load_image_file,
    prompt_limits_from_config,
    read_capped,
)
from tests.hostile_inputs import (
    BLUE,
    GREEN,
    IMAGE_LIMITS,
    PROMPT_LIMITS,
    RED,
    WHITE,
    image_corpus,
    prompt_corpus,
    raw_png,
)

REPO = Path(__file__).resolve().parent.parent
IMAGES = {name: (data, key) for name, data, key in image_corpus()}
PROMPTS = {name: (text, key) for name, text, key in prompt_corpus()}


def assert_one_sentence(message: str) -> None:
    assert "\n" not in message and "\r" not in message, message
    assert message.endswith("."), message
    assert len(message) < 200, message
    assert message[0].isupper(), message
    # a second sentence would start after ". " with a capital letter
    assert not re.search(r"[.!?] [A-Z]", message), message


def near(pixel: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


def load(name: str) -> Image.Image:
    return load_image(IMAGES[name][0], **IMAGE_LIMITS)


# ---------------------------------------------------------------- corpus


def test_corpus_is_large_and_covers_both_outcomes():
    assert len(IMAGES) + len(PROMPTS) >= 30
    assert len(IMAGES) == len(image_corpus()) and len(PROMPTS) == len(prompt_corpus())  # unique names
    for corpus in (image_corpus(), prompt_corpus()):
        keys = {key for _, _, key in corpus}
        assert None in keys and len(keys) > 3


@pytest.mark.parametrize("name", list(IMAGES))
def test_image_corpus(name):
    data, expected = IMAGES[name]
    start = time.perf_counter()
    if expected is None:
        img = load_image(data, **IMAGE_LIMITS)
        assert img.mode == "RGB"
        assert min(img.size) >= IMAGE_LIMITS["min_side"]
        img.getpixel((0, 0))  # decoded, not just opened
    else:
        with pytest.raises(UserError) as info:
            load_image(data, **IMAGE_LIMITS)
        assert info.value.key == expected, str(info.value)
        assert_one_sentence(str(info.value))
        assert time.perf_counter() - start < 0.5


def test_decompression_bomb_is_refused_from_the_header_fast_and_small():
    data = IMAGES["png_30000x30000_header"][0]
    assert len(data) < 100
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(UserError) as info:
            load_image(data, **IMAGE_LIMITS)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.key == "image_too_many_pixels"
    assert info.value.params["actual"] == 30000 * 30000
    assert info.value.params["limit"] == IMAGE_LIMITS["max_pixels"]
    assert elapsed < 0.5
    assert peak < 10_000_000


def test_bomb_headers_never_allocate_their_pixels():
    # tracemalloc misses Pillow's C allocations: measure the whole process's peak memory instead.
    code = (
        "from engine.media.validate import load_image; from engine.errors import UserError; "
        "from tests.hostile_inputs import raw_png, gif_header, zlib_bomb_png, IMAGE_LIMITS\n"
        "for data in (raw_png(30000, 30000), zlib_bomb_png(7000, 6000), gif_header(65535, 65535)):\n"
        "    try: load_image(data, **IMAGE_LIMITS)\n"
        "    except UserError as e: assert e.key == 'image_too_many_pixels', e.key\n"
        "    else: raise SystemExit('accepted')\n"
        # VmHWM, not ru_maxrss: on Linux a child's ru_maxrss starts from its parent's peak.
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60, capture_output=True)
    assert int(out.stdout) < 80_000  # KiB; decoding the 7000x6000 bomb alone would take 126 MB


def test_pixel_limit_below_pillows_own_reports_the_size():
    with pytest.raises(UserError) as info:
        load_image(raw_png(8000, 6000), **IMAGE_LIMITS)
    assert info.value.params == {"limit": 40_000_000, "actual": 48_000_000, "width": 8000, "height": 6000}
    assert "8000x6000" in str(info.value)
    # the same header passes the pixel check under a higher limit, then fails as the pixels are missing
    with pytest.raises(UserError) as info:
        load_image(raw_png(8000, 6000), **{**IMAGE_LIMITS, "max_pixels": 50_000_000})
    assert info.value.key == "corrupt_image"


def test_byte_limit_is_checked_before_anything_else():
    data, _ = IMAGES["jpeg"]
    with pytest.raises(UserError) as info:
        load_image(data, **{**IMAGE_LIMITS, "max_bytes": len(data) - 1})
    assert info.value.key == "image_too_large_bytes"
    assert info.value.params == {"limit": len(data) - 1, "actual": len(data)}
    # one byte over must not read as equal to the limit
    with pytest.raises(UserError) as info:
        load_image(b"\x00" * 2_000_001, **IMAGE_LIMITS)
    assert "2.000001 MB, over the 2 MB limit" in str(info.value)


def test_exif_rotation_is_applied():
    img = load("exif_rotated_jpeg")
    assert img.size == (100, 200)  # stored 200x100, orientation 6
    assert near(img.getpixel((50, 10)), RED) and near(img.getpixel((50, 190)), BLUE)


def test_animated_gif_gives_its_first_frame():
    img = load("animated_gif")
    assert img.size == (80, 80)
    assert near(img.getpixel((40, 40)), RED, tol=0)


def test_mpo_gives_its_first_picture():
    assert near(load("mpo_two_pictures").getpixel((50, 40)), RED)


def test_alpha_is_flattened_onto_white():
    img = load("rgba_png")
    assert near(img.getpixel((10, 10)), GREEN, tol=0)
    assert near(img.getpixel((10, 90)), WHITE, tol=0)
    img = load("palette_png_transparent")
    assert near(img.getpixel((10, 10)), WHITE, tol=0) and near(img.getpixel((90, 10)), GREEN, tol=0)


def test_colour_modes_convert_faithfully():
    assert near(load("cmyk_jpeg").getpixel((48, 48)), RED)
    assert near(load("png_16bit_gray").getpixel((5, 5)), (128, 128, 128), tol=2)  # scaled, not clipped
    assert near(load("png_16bit_rgb").getpixel((5, 5)), (255, 128, 0), tol=1)
    gray = load("grayscale_jpeg").getpixel((60, 40))
    assert gray[0] == gray[1] == gray[2]
    assert near(load("palette_png").getpixel((10, 10)), RED, tol=0)
    assert near(load("webp").getpixel((127, 95)), (255, 255, 128))


def test_refusals_carry_their_numbers():
    with pytest.raises(UserError) as info:
        load("one_pixel")
    assert info.value.params == {"limit": 64, "actual": 1, "width": 1, "height": 1}
    with pytest.raises(UserError) as info:
        load("heic")
    assert info.value.params["format"] == "HEIC"
    assert "JPEG, PNG, WebP or GIF" in str(info.value)


def test_load_image_file(tmp_path):
    good = tmp_path / "photo.jpg"
    good.write_bytes(IMAGES["exif_rotated_jpeg"][0])
    assert load_image_file(good, **IMAGE_LIMITS).size == (100, 200)
    with pytest.raises(UserError) as info:
        load_image_file(tmp_path / "missing.png", **IMAGE_LIMITS)
    assert info.value.key == "file_not_found"
    big = tmp_path / "big.png"
    big.write_bytes(IMAGES["huge_byte_size"][0])
    with pytest.raises(UserError) as info:
        load_image_file(big, **IMAGE_LIMITS)
    assert info.value.key == "image_too_large_bytes"
    with pytest.raises(UserError) as info:
        load_image_file(tmp_path, **IMAGE_LIMITS)
    assert info.value.key == "not_a_file"


def test_module_import_stays_light():
    code = (
        "import sys, engine.media.validate; "
        "heavy = [m for m in ('numpy', 'torch', 'diffusers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# ---------------------------------------------------------------- upload metadata

UPLOADS = [
    # content_type, size, filename, expected key
    ("image/jpeg", 1000, "a.jpg", None),
    ("image/png; charset=binary", 1000, "a.png", None),
    ("IMAGE/WEBP", 1000, None, None),
    ("image/gif", 1000, "a.gif", None),
    (None, 1000, "photo.JPEG", None),
    ("application/octet-stream", 1000, "photo.png", None),
    (None, None, None, None),
    ("image/heic", 1000, "IMG_0001.HEIC", "unsupported_format"),
    (None, 1000, "IMG_0001.heif", "unsupported_format"),
    ("image/svg+xml", 1000, "logo.svg", "unsupported_format"),
    ("image/bmp", 1000, "a.bmp", "unsupported_format"),
    ("image/tiff", 1000, "a.tif", "unsupported_format"),
    ("image/x-unknown", 1000, "a.xyz", "unsupported_format"),
    ("application/pdf", 1000, "doc.pdf", "unsupported_format"),
    ("text/plain", 1000, "notes.txt", "not_an_image"),
    ("video/mp4", 1000, "clip.mp4", "not_an_image"),
    ("application/zip", 1000, "a.zip", "not_an_image"),
    ("image/jpeg", 0, "a.jpg", "empty_file"),
    ("image/jpeg", 2_000_001, "a.jpg", "image_too_large_bytes"),
    ("image/jpeg", 2_000_000, "a.jpg", None),
]


@pytest.mark.parametrize(("content_type", "size", "filename", "expected"), UPLOADS)
def test_check_upload(content_type, size, filename, expected):
    if expected is None:
        assert check_upload(content_type, size, filename, 2_000_000) is None
        return
    with pytest.raises(UserError) as info:
        check_upload(content_type, size, filename, 2_000_000)
    assert info.value.key == expected
    assert_one_sentence(str(info.value))
    if expected == "unsupported_format":
        assert "JPEG, PNG, WebP or GIF" in str(info.value)


# ---------------------------------------------------------------- streamed downloads


class Stream:
    """An endless download that records how much was pulled from it and whether it was closed."""

    def __init__(self, chunk: int, total: int | None = None):
        self.chunk, self.total, self.pulled, self.closed = chunk, total, 0, False

    async def chunks(self):
        try:
            while self.total is None or self.pulled < self.total:
                size = self.chunk if self.total is None else min(self.chunk, self.total - self.pulled)
                self.pulled += size
                yield b"x" * size
        finally:
            self.closed = True


async def test_read_capped_stops_at_the_cap():
    stream = Stream(64 * 1024)
    with pytest.raises(UserError) as info:
        await read_capped(stream.chunks(), 1_000_000)
    assert info.value.key == "image_too_large_bytes"
    assert info.value.params["limit"] == 1_000_000 and info.value.params["actual"] > 1_000_000
    assert stream.pulled == 16 * 64 * 1024  # the first chunk past the cap, and not one more
    assert stream.closed
    assert_one_sentence(str(info.value))


async def test_read_capped_returns_everything_under_the_cap():
    stream = Stream(1000, total=5500)
    data = await read_capped(stream.chunks(), 5500)
    assert data == b"x" * 5500 and stream.closed


async def test_read_capped_accepts_an_async_iterable():
    class Body:
        def __aiter__(self):
            return Stream(10, total=30).chunks()

    assert await read_capped(Body(), 100) == b"x" * 30


# ---------------------------------------------------------------- prompts


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_corpus(name):
    text, expected = PROMPTS[name]
    if expected is None:
        cleaned = check_prompt(text, **PROMPT_LIMITS)
        assert cleaned and cleaned == cleaned.strip() and "  " not in cleaned
        assert not any(ch in cleaned for ch in "\n\r\t\x00\x1b\x07\u202e\u202c")
        return
    with pytest.raises(UserError) as info:
        check_prompt(text, **PROMPT_LIMITS)
    assert info.value.key == expected
    message = str(info.value)
    assert_one_sentence(message)
    if expected == "prompt_blocked_word":
        assert not any(word in message.lower() for word in PROMPT_LIMITS["blocked_words"])


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        ("control_characters_inside", "a cat walking slowly"),
        ("newlines_and_tabs", "line one line two line three"),
        ("everyone_mention", "@everyone look at this cat"),
        ("role_and_user_mentions", "<@&123> and <@456> and <#789> dancing"),
        ("arabic_rtl", "قطة تمشي على الشاطئ"),
        ("hebrew_rtl_with_marks", "\u200fחתול הולך על החוף\u200f"),
        ("bidi_override_inside", "a cat evil on a roof"),
        ("emoji", "🐱 walking 🌅 with a family 👨\u200d👩\u200d👧"),
        ("chinese", "一只猫在海滩上行走，夕阳西下"),
        ("lone_surrogate", "a cat jumping"),
        ("markdown", "**bold** _italic_ `code` ~~strike~~ [link](https://example.com) > quote"),
        ("long_only_in_whitespace", "dog runs"),
        ("blocked_word_inside_longer_word", "the forbiddenness of it"),
    ],
)
def test_prompt_cleaning_keeps_meaning(name, cleaned):
    assert check_prompt(PROMPTS[name][0], **PROMPT_LIMITS) == cleaned


def test_prompt_too_long_names_limit_and_length():
    with pytest.raises(UserError) as info:
        check_prompt("a" * 10_000, max_chars=500)
    assert info.value.params == {"limit": 500, "actual": 10_000}
    assert "10000" in str(info.value) and "500" in str(info.value)


def test_prompt_none_and_no_blocked_words():
    with pytest.raises(UserError) as info:
        check_prompt(None, max_chars=10)
    assert info.value.key == "empty_prompt"
    assert check_prompt("  forbidden  ", max_chars=50) == "forbidden"
    assert check_prompt("ok", max_chars=50, blocked_words=["", "  "]) == "ok"


# ---------------------------------------------------------------- config


def test_limits_from_config():
    cfg = parse_config(
        {
            "limits": {
                "max_image_bytes": 123,
                "max_image_pixels": 456,
                "min_image_side": 7,
                "max_prompt_chars": 50,
                "blocked_words": ["global"],
                "words": {"42": ["local"]},
            }
        }
    )
    assert limits_from_config(cfg) == {"max_bytes": 123, "max_pixels": 456, "min_side": 7}
    assert limits_from_config(cfg.limits) == limits_from_config(cfg)
    assert prompt_limits_from_config(cfg) == {"max_chars": 50, "blocked_words": ("global",)}
    scoped = prompt_limits_from_config(cfg, 42)
    assert scoped == {"max_chars": 50, "blocked_words": ("global", "local")}
    with pytest.raises(UserError):
        check_prompt("a local word", **scoped)
    assert check_prompt("a local word", **prompt_limits_from_config(cfg, 43)) == "a local word"
