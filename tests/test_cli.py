"""`python -m engine ...` as a user runs it: real processes, real files, exit codes and output lines."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.media.video import probe_mp4
from tests.harness import TINY_PRESETS, write_config
from tests.tiny_model import make_photo

ROOT = Path(__file__).resolve().parent.parent


def run(*args, cwd=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                                                           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})


@pytest.fixture
def cfg(tmp_path):
    return write_config(tmp_path / "config.toml", {
        "engine": {"model": "tiny", "device": "cpu"},
        "presets": TINY_PRESETS,
        "storage": {"url": str(tmp_path / "jobs.sqlite3"), "data_dir": str(tmp_path / "data")},
        "queue": {"per_user": 5},
    })


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.jpg"
    make_photo(160, 120).save(path, quality=90)
    return path


def test_generate_makes_a_valid_mp4_with_json_progress(cfg, photo, tmp_path):
    out = tmp_path / "out.mp4"
    res = run("generate", photo, "--prompt", "a ball rolling", "--config", cfg, "--seed", "3", "--out", out, "--json")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    steps = [x for x in lines if "step" in x]
    assert [s["step"] for s in steps] == [1, 2] and all(s["total"] == 2 for s in steps)
    assert lines[-1]["path"] == str(out) and lines[-1]["seed"] == 3
    info = probe_mp4(out)
    assert info["codec"] == "h264" and info["frames"] == 4 and info["fps"] == 8 and info["faststart"]


@pytest.mark.parametrize("args, words", [
    (["--prompt", ""], "prompt"),
    (["--prompt", "x", "--preset", "nope"], "preset"),
    (["--prompt", "x", "--model", "/does/not/exist"], "not found"),
])
def test_bad_input_exits_2_with_one_line(cfg, photo, args, words):
    res = run("generate", photo, "--config", cfg, *args)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0].lower(), res.stderr


def test_a_bad_image_is_refused_before_torch_is_imported(cfg, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    t0 = time.monotonic()
    res = run("generate", bad, "--prompt", "x", "--config", cfg)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 3.0   # importing torch alone takes longer here


def test_submit_jobs_cancel_on_one_store(cfg, photo):
    ids = []
    for user in ("ann", "bob", "ann"):
        res = run("submit", photo, "--prompt", "waves", "--user", user, "--config", cfg)
        assert res.returncode == 0, res.stderr
        assert len(res.stdout.split()) == 1
        ids.append(res.stdout.strip())
    listing = run("jobs", "--config", cfg)
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert [r[0] for r in rows] == ids and all(r[1] == "queued" for r in rows)
    assert [r[4] for r in rows] == ["1", "3", "2"] or [r[4] for r in rows] == ["1", "2", "3"]
    assert run("cancel", ids[1], "--config", cfg).returncode == 0
    rows = [json.loads(line) for line in run("jobs", "--config", cfg, "--json").stdout.splitlines()]
    assert rows[1]["state"] == "cancelled" and rows[1]["position"] is None
    waiting = run("jobs", "--config", cfg, "--state", "queued", "--user", "ann", "--limit", "1").stdout
    assert [line.split()[0] for line in waiting.splitlines()] == [ids[0]]
    assert run("cancel", "nope", "--config", cfg).returncode == 2
