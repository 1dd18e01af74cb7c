"""Model loading: the tiny model, saving and loading a folder, refusals, and the full-size architecture."""

import json
import time

import numpy as np
import pytest
import torch

from engine.errors import ModelError
from engine.render.model import (
    ALLOW_CPU_FULL_ENV,
    build_random_full,
    build_tiny,
    count_parameters_meta,
    full_configs,
    load_model,
    place,
    save_model,
)
from engine.render.sampler import sample
from tests.tiny_model import make_photo

torch.set_num_threads(1)

SHORT = dict(steps=2, scheduler="dpmpp_2m", guidance=7.0, frames=3, width=64, height=64, seed=5)


@pytest.fixture(autouse=True)
def no_cpu_override(monkeypatch):
    monkeypatch.delenv(ALLOW_CPU_FULL_ENV, raising=False)


def state(parts):
    return {f"{name}.{k}": v for name, m in parts.modules().items() for k, v in m.state_dict().items()}


def test_tiny_is_deterministic_per_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = build_tiny(0), build_tiny(0), build_tiny(1)
    assert torch.equal(torch.rand(3), expected_draw)
    sa, sb, sc = state(a), state(b), state(c)
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.parameter_count() < 1_000_000
    assert a.name == "tiny" and a.dtype == torch.float32 and a.device.type == "cpu"


def test_tiny_model_has_eighth_size_latents(tiny_parts):
    with torch.no_grad():
        latent = tiny_parts.vae.encode(torch.zeros(1, 3, 64, 48)).latent_dist.mean
    assert latent.shape == (1, 4, 8, 6)
    assert tiny_parts.vae.config.scaling_factor == pytest.approx(0.18125)


def test_saved_tiny_folder_loads_back_identical_on_cpu(tiny_parts, tmp_path):
    folder = save_model(tiny_parts, tmp_path / "tiny-model")
    for sub in (
        "unet",
        "vae",
        "image_encoder",
        "text_encoder",
        "tokenizer",
        "feature_extractor",
        "scheduler",
    ):
        assert (folder / sub).is_dir(), sub
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "I2VGenXLPipeline"

    loaded = load_model(str(folder), device="cpu")  # no ENGINE_ALLOW_CPU_FULL: a tiny folder is fine on CPU

    s0, s1 = state(tiny_parts), state(loaded)
    assert s0.keys() == s1.keys()
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert loaded.scheduler_config == tiny_parts.scheduler_config
    text = "a boat, at dawn!"
    assert loaded.tokenizer(text).input_ids == tiny_parts.tokenizer(text).input_ids
    photo = make_photo(80, 64)
    assert np.array_equal(
        sample(loaded, photo, "a boat", **SHORT), sample(tiny_parts, photo, "a boat", **SHORT)
    )


def test_saved_folder_is_the_diffusers_layout(tiny_parts, tmp_path):
    from diffusers import I2VGenXLPipeline

    save_model(tiny_parts, tmp_path / "m")
    pipe = I2VGenXLPipeline.from_pretrained(tmp_path / "m")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.block_out_channels == list(tiny_parts.unet.config.block_out_channels)


def test_missing_folder_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found") as info:
        load_model(str(tmp_path / "no-such-model"), device="cpu")
    assert "\n" not in str(info.value)


def test_folder_without_a_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="unet/config.json"):
        load_model(str(tmp_path), device="cpu")


def test_hub_id_not_in_cache_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(ALLOW_CPU_FULL_ENV, "1")  # get past the GPU check to the actual lookup
    start = time.perf_counter()
    with pytest.raises(ModelError, match="Cannot load model") as info:
        load_model("engine-tests/no-such-i2vgen", device="cpu")
    assert time.perf_counter() - start < 10
    assert "\n" not in str(info.value)


def test_full_size_hub_model_needs_a_gpu():
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        load_model("ali-vilab/i2vgen-xl", device="cpu")


def test_full_size_folder_needs_a_gpu_unless_allowed(tmp_path, monkeypatch):
    unet_dir = tmp_path / "full" / "unet"
    unet_dir.mkdir(parents=True)
    config = {"_class_name": "I2VGenXLUNet", **full_configs()["unet"]}
    unet_dir.joinpath("config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        load_model(str(tmp_path / "full"), device="cpu")
    monkeypatch.setenv(ALLOW_CPU_FULL_ENV, "1")
    with pytest.raises(ModelError, match="Cannot load model") as info:  # allowed, but the weights are missing
        load_model(str(tmp_path / "full"), device="cpu")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_asked_for_without_a_gpu():
    with pytest.raises(ModelError, match="no CUDA GPU"):
        load_model("tiny", device="cuda")
    with pytest.raises(ModelError, match="CUDA GPU"):
        build_random_full("cpu")


def test_full_size_architecture_matches_i2vgen_xl():
    counts = count_parameters_meta(full_configs())
    expected = {"unet": 1_420e6, "image_encoder": 632e6, "text_encoder": 353e6, "vae": 84e6}
    for name, figure in expected.items():
        assert abs(counts[name] - figure) / figure < 0.05, (name, counts[name])
    assert full_configs()["text_encoder"].num_hidden_layers == 24


def test_low_vram_path_gives_the_same_frames(tiny_parts):
    parts = place(build_tiny(), torch.device("cpu"), torch.float32, low_vram=True)
    assert parts.low_vram
    photo = make_photo(64, 64)
    assert np.array_equal(sample(parts, photo, "a cat", **SHORT), sample(tiny_parts, photo, "a cat", **SHORT))
    assert all(p.device.type == "cpu" for m in parts.modules().values() for p in m.parameters())
