"""The architecture's one rule, proved: bot/ and every engine package but render/ import without torch.

Each check runs in a fresh interpreter whose import system refuses torch, diffusers, transformers and
accelerate, so a top-level import of any of them (direct, or through another module) fails the test. The
render package is the only place they may be imported; the worker reaches it through lazy imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers", "accelerate")

PROBE = r"""
import importlib, importlib.abc, json, pkgutil, sys

HEAVY = set(json.loads(sys.argv[1]))
PACKAGES = json.loads(sys.argv[2])
SKIP = json.loads(sys.argv[3])   # packages allowed to import torch: not walked


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"{name} is not importable in this process")
        return None


sys.meta_path.insert(0, Refuse())
imported, failed = [], {}
for package in PACKAGES:
    root = importlib.import_module(package)
    walked = pkgutil.walk_packages(root.__path__, package + ".", onerror=lambda name: None)
    for name in [package] + [m.name for m in walked]:
        if any(name == s or name.startswith(s + ".") for s in SKIP):
            continue
        try:
            importlib.import_module(name)
            imported.append(name)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({"imported": imported, "failed": failed, "heavy_loaded": loaded}))
"""


def probe(*packages: str, skip: tuple[str, ...] = ("engine.render",)) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY), json.dumps(packages), json.dumps(skip)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bot_and_engine_outside_render_import_without_torch():
    result = probe("bot", "engine")
    assert result["failed"] == {}
    assert result["heavy_loaded"] == []
    imported = set(result["imported"])
    # Every layer was really walked: a probe that imported nothing would prove nothing.
    for name in ("bot.core", "bot.__main__", "bot.discord.app", "bot.telegram.app", "engine.config",
                 "engine.__main__", "engine.queue.service", "engine.queue.worker", "engine.queue.sqlite_store",
                 "engine.queue.redis_store", "engine.media.validate", "engine.media.video",
                 "engine.prompts.slots"):
        assert name in imported, name
    assert not any(n.startswith("engine.render") for n in imported)


def test_the_probe_does_refuse_the_render_package():
    """The guard itself works: under it, the render package's modules fail on torch."""
    failed = probe("engine.render", skip=())["failed"]
    for name in ("engine.render.model", "engine.render.sampler", "engine.render.memory"):
        assert "torch" in failed[name], name
