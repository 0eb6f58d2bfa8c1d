"""One input policy in the library: `MemoPipeline.check_inputs` and the `MemoModels` limits it uses."""

from __future__ import annotations

import pytest
import torch

from memo_pipeline.loading import MemoModels
from memo_pipeline.pipeline import MAX_SEED, GenerationSettings, MemoPipeline, WindowedAudio, reference_pixels
from memo_pipeline.tiny import TINY_CONFIGS, TINY_WAV2VEC
from memo_pipeline.vae import DiffusersVAE

FAST = dict(steps=1, frames_per_clip=4, past_frames=4, init_past_frames=4, seed=1)


@pytest.fixture(scope="module")
def pipeline(tiny_bundle):
    return MemoPipeline(MemoModels.load(tiny_bundle["memo"]), DiffusersVAE.from_pretrained(tiny_bundle["vae"], batch_size=8))


def _audio(frames=8, layers=TINY_WAV2VEC["num_hidden_layers"], channels=TINY_WAV2VEC["hidden_size"]):
    return WindowedAudio(torch.randn(frames, 5, layers, channels, generator=torch.Generator().manual_seed(0)))


def test_models_report_their_limits(pipeline):
    models = pipeline.models
    assert models.audio_feature_shape == (TINY_WAV2VEC["num_hidden_layers"], TINY_WAV2VEC["hidden_size"])
    assert models.face_embedding_width == 512
    table = TINY_CONFIGS["diffusion_net"]["motion_module_kwargs"]["temporal_position_encoding_max_len"]
    assert models.max_frames_per_clip == table
    assert models.supports_guidance


@pytest.mark.parametrize("kwargs, message", [
    (dict(face_embedding=torch.zeros(1, 256)), "256 values, this checkpoint needs 512"),
    (dict(face_embedding=torch.full((1, 512), float("nan"))), "finite"),
    (dict(audio=_audio(layers=3)), "3 layers x 16 channels, this checkpoint expects 2 x 16"),
    (dict(settings=GenerationSettings(**{**FAST, "frames_per_clip": 64})), "more than this checkpoint handles \\(32"),
    (dict(settings=GenerationSettings(**{**FAST, "seed": -1})), "seed must be >= 0 \\(a whole number in 0..18446744073709551615"),
    (dict(settings=GenerationSettings(**{**FAST, "seed": MAX_SEED + 1})), "seed must be"),
    (dict(settings=GenerationSettings(**{**FAST, "seed": 1.5})), "seed must be"),
    (dict(reference_image=reference_pixels(torch.rand(60, 60, 3))), "not a multiple of 8"),
    (dict(audio=_audio(), emotion=torch.tensor([12])), "emotion labels must be in"),
])
def test_check_inputs_refuses_with_a_clear_message(pipeline, kwargs, message):
    kwargs.setdefault("settings", GenerationSettings(**FAST))
    with pytest.raises(ValueError, match=message):
        pipeline.check_inputs(**kwargs)


def test_generate_applies_the_same_checks_before_any_network_runs(pipeline):
    with pytest.raises(ValueError, match="this checkpoint needs 512"):
        next(pipeline.generate(reference_pixels(torch.rand(64, 64, 3)), torch.zeros(1, 100), _audio(), 3,
                               GenerationSettings(**FAST)))


@pytest.mark.parametrize("resolution", [8, 16, 40])
def test_small_resolutions_that_the_networks_run_are_accepted(pipeline, resolution):
    settings = GenerationSettings(**{**FAST, "seed": MAX_SEED})
    clips = list(pipeline.generate(reference_pixels(torch.rand(resolution, resolution, 3)), None, _audio(4), 3, settings))
    assert clips[0].frames.shape == (4, 3, resolution, resolution) and torch.isfinite(clips[0].frames).all()
