"""What callers outside the library ask `MemoModels` (instead of reading network configs), and
`load_on_demand`, through which a model manager places one network at a time."""

from __future__ import annotations

import pytest
import torch

from memo_pipeline.tiny import TINY_CONFIGS, tiny_memo_models


@pytest.fixture(scope="module")
def models():
    return tiny_memo_models(seed=0)


def test_shapes_the_checkpoint_expects(models):
    proj = TINY_CONFIGS["audio_proj"]
    assert models.audio_feature_shape == (proj["blocks"], proj["channels"])
    assert models.face_embedding_width == TINY_CONFIGS["image_proj"]["clip_embeddings_dim"]
    table = TINY_CONFIGS["diffusion_net"]["motion_module_kwargs"]["temporal_position_encoding_max_len"]
    assert models.max_frames_per_clip == table


def test_load_on_demand_loads_each_network_just_before_its_forward(models):
    calls = []
    before = models.device
    with models.load_on_demand("meta", calls.append) as same:
        assert same is models and models.device == torch.device("meta")
        tokens = models.image_proj(torch.zeros(1, models.face_embedding_width))
        models.image_proj(torch.zeros(1, models.face_embedding_width))
        layers, channels = models.audio_feature_shape
        models.audio_proj(torch.zeros(1, 2, 5, layers, channels))
    assert calls == [models.image_proj, models.image_proj, models.audio_proj]
    assert tokens.shape[0] == 1
    assert models.device == before  # the reported device and the hooks end with the block
    models.image_proj(torch.zeros(1, models.face_embedding_width))
    assert len(calls) == 3 and not any(m._forward_pre_hooks for m in models.modules().values())


def test_load_on_demand_cleans_up_after_an_error(models):
    def refuse(network):
        raise RuntimeError("no room for " + type(network).__name__)

    with pytest.raises(RuntimeError, match="no room for ImageProjection"):
        with models.load_on_demand("cpu", refuse):
            models.image_proj(torch.zeros(1, models.face_embedding_width))
    assert not any(m._forward_pre_hooks for m in models.modules().values())
    assert models.device == models.diffusion_net.device
