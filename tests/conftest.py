"""Shared test setup: one torch thread, no proxies, and the repository root on the path."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(var, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
async def fake():
    """The fake Discord (tests of Telegram name their own `fake`)."""
    from tests.fakes.discord_server import FakeDiscord

    async with FakeDiscord() as server:
        yield server
    assert not server.server_errors


@pytest.fixture(scope="session")
def tiny_parts():
    """The tiny random-weight I2VGen-XL, built once per test session (torch is imported only when asked for)."""
    import torch

    from engine.render.model import load_model

    torch.set_num_threads(1)
    return load_model("tiny", device="cpu")
