"""The fast path: its options from the config, fused QKV and the compiled UNet equal to eager on the tiny
model, shapes compiled only at warm-up, the VAE decode chunk within its memory budget."""

import dataclasses
import math
import os

import numpy as np
import pytest
import torch

from engine.config import EngineConfig, load_config
from engine.presets import DEFAULT_PRESETS, Preset
from engine.render.fastpath import (
    COMPILE_CACHE_DIR,
    COMPILE_MODE,
    GRAPHS_MODE,
    FastPathOptions,
    WarmCompiled,
    accelerate,
    compile_cache_key,
    configure_compile_cache,
    decode_chunk_for,
    decode_chunk_policy,
    decode_gib_estimate,
    fp8_unavailable,
    fuse_qkv,
    options_from_config,
    to_channels_last,
)
from engine.render.model import build_tiny
from engine.render.renderer import Renderer
from engine.render.sampler import sample
from engine.render.startup import build_renderer, warm_presets, warm_up
from tests.tiny_model import make_photo, tiny_presets

torch.set_num_threads(1)

RENDER = dict(steps=3, scheduler="dpmpp_2m", guidance=9.0, frames=4, width=64, height=64, seed=5, output="float")


@pytest.fixture(scope="module")
def photo():
    return make_photo(96, 80)


@pytest.fixture(scope="module")
def eager_frames(tiny_parts, photo):
    return sample(tiny_parts, photo, "a boat on a lake", "blurry", **RENDER)


def off(**changes) -> FastPathOptions:
    base = FastPathOptions(compile=False, cuda_graphs=False, channels_last=False, fuse_qkv=False, cache_dir=None)
    return dataclasses.replace(base, **changes)


def config(**fields) -> EngineConfig:
    return EngineConfig(**fields)


# ---------------------------------------------------------------- options


def test_auto_options_are_on_for_cuda_and_off_for_the_cpu(tmp_path):
    cpu = options_from_config(EngineConfig(), "cpu", tmp_path)
    assert (cpu.compile, cpu.fuse_qkv, cpu.cuda_graphs, cpu.cache_dir) == (False, False, False, None)
    cuda = options_from_config(EngineConfig(), "cuda", tmp_path)
    assert cuda.compile and cuda.fuse_qkv and cuda.cache_dir == tmp_path / COMPILE_CACHE_DIR / compile_cache_key(torch.device("cuda"))
    # Exact-output options only by default; CUDA graphs and layout changes need asking for.
    assert not (cuda.cuda_graphs or cuda.channels_last or cuda.fp8 or cuda.compile_vae)
    assert cuda.compile_mode == COMPILE_MODE == "default"


def test_explicit_settings_win_over_auto(tmp_path):
    assert options_from_config(EngineConfig(compile=True), "cpu", tmp_path).compile
    no = options_from_config(EngineConfig(compile=False), "cuda", tmp_path)
    assert not no.compile and no.cache_dir is None and no.fuse_qkv
    graphs = options_from_config(config(cuda_graphs=True, fuse_qkv=False, fp8="on"), "cuda", tmp_path)
    assert graphs.cuda_graphs and graphs.compile_mode == GRAPHS_MODE and not graphs.fuse_qkv and graphs.fp8
    assert not options_from_config(config(cuda_graphs=True, compile=False), "cuda", tmp_path).cuda_graphs


def test_fast_path_keys_reach_the_fast_path_from_the_file_and_the_environment(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[engine]\ncuda_graphs = true\nchannels_last = true\nfp8 = true\ncompile_vae = true\n'
                    'compile_dynamic_hw = true\ncompile_mode = "max-autotune-no-cudagraphs"\nfuse_qkv = false\n')
    options = options_from_config(load_config(path, env={}).engine, "cuda", tmp_path)
    assert (options.cuda_graphs, options.channels_last, options.fp8, options.compile_vae, options.dynamic_hw,
            options.fuse_qkv) == (True, True, True, True, True, False)
    assert options.compile_mode == "max-autotune-no-cudagraphs"
    env = {"ANIMABOT_ENGINE__COMPILE_MODE": "default", "ANIMABOT_ENGINE__FP8": "false"}
    from_env = options_from_config(load_config(path, env=env).engine, "cuda", tmp_path)
    assert from_env.compile_mode == "default" and not from_env.fp8 and from_env.cuda_graphs


def test_warm_presets_skip_the_out_of_memory_fallbacks():
    assert warm_presets(DEFAULT_PRESETS) == ["quick", "hq", "turbo", "fast"]   # build_renderer keeps its family's
    assert warm_presets(DEFAULT_PRESETS, config(warm_presets=["lite", "nope"])) == ["lite"]


def test_compile_cache_settings_reach_the_environment(tmp_path, monkeypatch):
    import torch._inductor.config as inductor_config

    for var in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.setenv(var, "")  # restored after the test
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    configure_compile_cache(tmp_path / "cache")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
    assert (tmp_path / "cache").is_dir()
    assert os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] == os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] == "1"
    assert inductor_config.fx_graph_cache


# ---------------------------------------------------------------- decode chunk


def test_decode_chunk_matches_the_measured_figures_and_stays_in_budget():
    # 16 frames at 512x512: room for 6 frames in 4 GiB (measured ~0.6 GiB a frame), split 6, 6, 4.
    assert decode_chunk_for(512, 512, 16, 4.0) == 6
    assert decode_chunk_for(512, 512, 16, 3.0) == 4
    assert decode_chunk_for(512, 512, 16, 100.0) == 16
    assert decode_chunk_for(512, 512, 16, 0.1) == 1  # never below one frame
    assert decode_chunk_for(256, 256, 8, 4.0) == 8   # a quarter of the pixels: all 8 frames fit
    # 8 frames at once measured 9.5 - 5.3 = 4.2 GiB above one frame at a time.
    assert abs(decode_gib_estimate(512, 512, 8) - decode_gib_estimate(512, 512, 1) - 4.2) < 0.1
    for width, height in ((512, 512), (640, 384), (256, 192), (1024, 576)):
        for frames in (1, 8, 16, 25):
            for budget in (0.5, 1.0, 2.5, 4.0, 9.0):
                chunk = decode_chunk_for(width, height, frames, budget)
                fitting = [c for c in range(1, frames + 1) if decode_gib_estimate(width, height, c) <= budget]
                largest = max(fitting, default=1)
                assert 1 <= chunk <= largest
                # As few decode calls as with the largest chunk that fits, in chunks as even as possible.
                assert math.ceil(frames / chunk) == math.ceil(frames / largest)


def test_decode_chunk_policy_is_the_budget_on_cuda_and_fixed_on_the_cpu(tiny_parts):
    assert decode_chunk_policy(tiny_parts, EngineConfig()) is None
    on_cuda = dataclasses.replace(tiny_parts, device=torch.device("cuda"))
    policy = decode_chunk_policy(on_cuda, EngineConfig(decode_chunk_size=8, vae_memory_budget_gib=4.0))
    assert policy(512, 512, 16) == 6 and policy(256, 256, 8) == 8
    assert decode_chunk_policy(on_cuda, EngineConfig(decode_chunk_size=4, vae_memory_budget_gib=9.0))(
        512, 512, 16) == 4  # decode_chunk_size caps it


def test_renderer_asks_the_decode_chunk_policy_for_each_render(tiny_parts):
    asked = []

    def policy(width, height, frames):
        asked.append((width, height, frames))
        return 3

    renderer = Renderer(tiny_parts, decode_chunk_size=8, decode_chunk=policy)
    presets = tiny_presets()
    result = renderer.render(make_photo(80, 64), "x", "", presets["quick"], 1, presets)
    assert asked == [(64, 64, 4)] and result.frames.shape == (4, 64, 64, 3)
    assert Renderer(tiny_parts, decode_chunk_size=5).decode_chunk_for(64, 64, 4) == 5


# ---------------------------------------------------------------- exact transformations


def test_fused_qkv_equals_eager_and_holds_no_second_copy(photo, eager_frames):
    parts = build_tiny()
    before = parts.parameter_count()
    assert fuse_qkv(parts.unet) > 0
    assert fuse_qkv(parts.unet) == 0  # already fused
    names = {type(p).__name__ for p in parts.unet.attn_processors.values()}
    assert names == {"FusedAttnProcessor2_0"}
    assert parts.parameter_count() == before  # q, k, v dropped once concatenated
    fused = sample(parts, photo, "a boat on a lake", "blurry", **RENDER)
    assert eager_frames.std() > 0.01
    assert np.abs(fused - eager_frames).max() <= 1e-5


def test_channels_last_is_a_layout_change_only(photo, eager_frames):
    parts = build_tiny()
    to_channels_last(parts.unet)
    to_channels_last(parts.vae)
    convs3d = [p for p in parts.unet.parameters() if p.dim() == 5]
    assert convs3d and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in convs3d)
    out = sample(parts, photo, "a boat on a lake", "blurry", **RENDER)
    assert np.abs(out - eager_frames).max() <= 1e-5
    to_channels_last(parts.unet, "contiguous")
    assert all(p.is_contiguous() for p in parts.unet.parameters())


def test_fp8_is_refused_with_a_reason_off_a_float8_card():
    assert "CUDA card" in fp8_unavailable(torch.device("cpu"))


# ---------------------------------------------------------------- compiling


def test_compiled_unet_runs_warmed_shapes_compiled_and_others_eagerly(photo, eager_frames):
    # The eager backend captures the same graphs as inductor without generating code: quick on a CPU.
    parts = build_tiny()
    fast = accelerate(parts, off(compile=True, fuse_qkv=True, backend="eager"))
    unet = fast.unet
    assert isinstance(unet, WarmCompiled) and unet.module is parts.unet
    assert unet.config.in_channels == 4 and unet.dtype == torch.float32  # read through
    assert fast.parameter_count() == parts.parameter_count()
    assert warm_up(fast, {}, []) == {}

    presets = {"a": Preset("a", steps=3, pixels=64 * 64, frames=4, fallback="b"),
               "b": Preset("b", steps=2, pixels=64 * 64, frames=4)}  # same shapes: rendered once
    times = warm_up(Renderer(fast, decode_chunk_size=2), presets, ["a", "b"])
    assert list(times) == ["a 1:1 64x64x4"] and times["a 1:1 64x64x4"] > 0
    assert unet.calls == {"compiled": 2, "eager": 0} and len(unet.warm_keys) == 1

    out = sample(fast, photo, "a boat on a lake", "blurry", **RENDER)
    assert unet.calls == {"compiled": 5, "eager": 0}
    assert np.abs(out - eager_frames).max() <= 1e-5

    sample(fast, photo, "a boat on a lake", "blurry", **{**RENDER, "width": 128})  # never warmed
    assert unet.calls == {"compiled": 5, "eager": 3}


@pytest.mark.slow
def test_compiled_vae_decoder_learns_its_chunk_shapes(photo, eager_frames):
    parts = build_tiny()
    fast = accelerate(parts, off(compile=True, compile_vae=True, backend="eager"))
    decoder = fast.vae.decoder
    assert isinstance(decoder, WarmCompiled)
    assert accelerate(fast, off(compile=True, backend="eager")).unet is fast.unet  # not wrapped twice
    warm_up(Renderer(fast, decode_chunk_size=4), {"p": Preset("p", steps=2, pixels=64 * 64, frames=4)}, ["p"])
    assert decoder.calls == {"compiled": 1, "eager": 0}  # the 4 frames in one call
    out = sample(fast, photo, "a boat on a lake", "blurry", **RENDER)  # decode_chunk_size 8: 4 frames again
    assert decoder.calls == {"compiled": 2, "eager": 0}
    assert np.abs(out - eager_frames).max() <= 1e-5
    sample(fast, photo, "a boat on a lake", "blurry", decode_chunk_size=3, **RENDER)  # 3 + 1: not warmed
    assert decoder.calls == {"compiled": 2, "eager": 2}


@pytest.mark.manual   # an opt-in experiment (compile_dynamic_hw): 25 s of symbolic tracing here; -m manual runs it
def test_dynamic_height_and_width_compile_one_graph_for_every_bucket(photo):
    from torch._dynamo.utils import counters

    fast = accelerate(build_tiny(), off(compile=True, backend="eager", dynamic_hw=True))
    graphs = counters["stats"]["unique_graphs"]
    preset = {"p": Preset("p", steps=2, pixels=128 * 64, frames=4)}
    times = warm_up(fast, preset, ["p"])
    assert list(times) == ["p 1:1 64x64x4", "p 16:9 128x64x4", "p 9:16 64x128x4"]  # 4:3 and 3:4 are 1:1 here
    assert counters["stats"]["unique_graphs"] - graphs == 1
    assert len(fast.unet.warm_keys) == 3


def test_build_renderer_on_the_cpu_is_plain_eager(tiny_parts, tmp_path, photo):
    renderer = build_renderer(tiny_parts, EngineConfig(decode_chunk_size=3), tiny_presets(), tmp_path)
    assert renderer.parts is tiny_parts and renderer.decode_chunk is None
    assert renderer.decode_chunk_for(64, 64, 16) == 3
    assert not (tmp_path / COMPILE_CACHE_DIR).exists()


def test_build_renderer_with_compile_warms_the_chosen_presets(tmp_path, photo):
    parts = build_tiny()
    presets = tiny_presets()
    cfg = config(compile=True, compile_backend="eager", warm_presets=None)
    renderer = build_renderer(parts, cfg, presets, tmp_path, warm=["quick"])
    unet = renderer.parts.unet
    assert isinstance(unet, WarmCompiled) and len(unet.warm_keys) == 1
    result = renderer.render(photo, "x", "", presets["quick"], 0, presets)
    assert result.frames.shape == (4, 64, 64, 3) and unet.calls["eager"] == 0


def test_a_compiler_that_fails_twice_leaves_an_eager_renderer(tmp_path, photo, eager_frames, caplog):
    """The tvm backend is not installed here, so compiling really fails at the first call. The worker must
    still come up: the cache is emptied for a second try, and after that failure every shape runs eagerly."""
    stale = tmp_path / COMPILE_CACHE_DIR / compile_cache_key(torch.device("cpu")) / "stale-kernel.so"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    parts = build_tiny()
    cfg = config(compile=True, compile_backend="tvm", warm_presets=None, decode_chunk_size=3)
    with caplog.at_level("WARNING", logger="engine.render.startup"):
        renderer = build_renderer(parts, cfg, tiny_presets(), tmp_path, warm=["quick"])
    assert [r.message.split(":")[0] for r in caplog.records] == [
        "compile warm-up failed (attempt 1)", "compile warm-up failed (attempt 2)",
        "compiling failed twice"]
    assert not stale.exists() and stale.parent.is_dir()
    unet = renderer.parts.unet
    assert isinstance(unet, WarmCompiled) and not unet.warm_keys
    tried = unet.calls["compiled"]   # the two failed first calls
    frames = sample(renderer.parts, photo, "a boat on a lake", "blurry", **RENDER)
    assert unet.calls["compiled"] == tried and unet.calls["eager"] > 0 and np.abs(frames - eager_frames).max() < 1e-5


@pytest.mark.manual
@pytest.mark.timeout(600)
def test_inductor_compiled_render_equals_eager(photo, eager_frames, tmp_path, monkeypatch):
    """The real compiler with an empty cache (C++ kernels on a CPU): 95-120 s on two cores, so kept out of CI;
    run it with -m manual. The GPU bench compares compiled and eager renders with inductor on every run."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    parts = build_tiny()
    fast = accelerate(parts, off(compile=True, fuse_qkv=True, cache_dir=tmp_path / "cache"))
    times = warm_up(fast, {"q": Preset("q", steps=3, pixels=64 * 64, frames=4)}, ["q"])
    assert len(times) == 1
    out = sample(fast, photo, "a boat on a lake", "blurry", **RENDER)
    assert fast.unet.calls["eager"] == 0
    assert np.abs(out - eager_frames).max() <= 1e-4
    assert any((tmp_path / "cache").iterdir())  # the persistent cache was written
