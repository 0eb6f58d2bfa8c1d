"""Per-clip constants: explicit data, filled by a clip's first step, same video with and without."""

from __future__ import annotations

import pytest
import torch

from memo_pipeline.loading import build_model
from memo_pipeline.models.clip_constants import ClipConstants
from memo_pipeline.models.diffusion_net import DiffusionNet, check_motion_resolutions
from memo_pipeline.models.motion_memory import MotionMemory
from memo_pipeline.models.reference_features import ReferenceFeatures
from memo_pipeline.models.reference_net import ReferenceNet
from memo_pipeline.tiny import TINY_CONFIGS, randomize


@pytest.fixture(scope="module")
def nets():
    reference = randomize(build_model(ReferenceNet, TINY_CONFIGS["reference_net"]), seed=1).eval()
    diffusion = randomize(build_model(DiffusionNet, TINY_CONFIGS["diffusion_net"]), seed=2).eval()
    return reference, diffusion


def _clip_inputs(reference_net, frames=3, past=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    face = torch.randn(2, 4, 24, generator=g)
    features = reference_net(torch.randn(2 * (1 + past), 4, 8, 8, generator=g), torch.zeros(()), face)
    audio = torch.randn(2, frames, 4, 16, generator=g)
    latents = torch.randn(2, 4, frames, 8, 8, generator=g)
    uc_mask = torch.arange(2 * frames) < frames
    return features, face, audio, latents, uc_mask


def _steps(net, features, face, audio, latents, uc_mask, constants_per_clip: bool, steps=3):
    memory, outputs = MotionMemory(), []
    constants = ClipConstants() if constants_per_clip else None
    with torch.no_grad():
        for step in range(steps):
            update = "reset" if step == 0 else "read"
            outputs.append(net(latents + step, features, torch.tensor(900.0 - 100 * step), face, audio,
                               torch.tensor([9, 3]), memory, update, uc_mask, constants=constants))
    return outputs, constants


def test_reference_features_are_typed_one_tensor_per_layer(nets):
    reference, diffusion = nets
    features = _clip_inputs(reference)[0]
    assert isinstance(features, ReferenceFeatures)
    layers = [len(level.resnets) for level in diffusion.down_blocks]
    assert [len(level) for level in features.down] == layers
    assert len(features.mid) == 1 and all(torch.is_tensor(t) for t in features.tensors())


def test_constants_are_filled_by_the_first_step_and_reused(nets):
    reference, diffusion = nets
    inputs = _clip_inputs(reference)
    cached, constants = _steps(diffusion, *inputs, constants_per_clip=True)
    plain, _ = _steps(diffusion, *inputs, constants_per_clip=False)
    assert len(constants) > 0
    names = {name for name, _ in diffusion.named_modules()}
    assert set(constants.entries) <= names  # keyed by the owning layer's module path
    for a, b in zip(cached, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # a second run with fresh constants gives the same numbers: nothing is kept in the model
    again, _ = _steps(diffusion, *inputs, constants_per_clip=True)
    for a, b in zip(cached, again):
        assert torch.equal(a, b)


def test_stale_constants_change_the_output(nets):
    """The constants really are used: those of another clip give another result."""
    reference, diffusion = nets
    first = _clip_inputs(reference, seed=0)
    other = _clip_inputs(reference, seed=1)
    _, stale = _steps(diffusion, *other, constants_per_clip=True, steps=1)
    fresh, _ = _steps(diffusion, *first, constants_per_clip=True, steps=1)
    memory = MotionMemory()
    with torch.no_grad():
        wrong = diffusion(first[3], first[0], torch.tensor(900.0), first[1], first[2], torch.tensor([9, 3]), memory,
                          "reset", first[4], constants=stale)
    assert not torch.allclose(wrong, fresh[0], atol=1e-3)


def test_up_level_rule_of_the_release_is_checked():
    check_motion_resolutions(4, (1, 2, 4, 8))
    check_motion_resolutions(2, (1, 2, 4, 8))
    with pytest.raises(ValueError, match="2\\*\\*\\(3-i\\)"):
        check_motion_resolutions(3, (1, 2))
    with pytest.raises(ValueError, match="levels"):
        build_model(DiffusionNet, dict(TINY_CONFIGS["diffusion_net"], motion_module_resolutions=[1]))
