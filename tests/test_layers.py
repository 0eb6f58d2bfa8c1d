"""The layer injection point: layer classes, weight casts and storage dtypes (memo_pipeline/layers.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memo_pipeline.layers import (CastingLayer, CastingLayers, cast_weight, layer_weights, storage_dtypes,
                                  to_storage_dtype, use_layers)


def _codes(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(256, dtype=torch.uint8).view(dtype)


@pytest.mark.parametrize("target", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_fast_e4m3fn_cast_equals_torch_for_every_code(target):
    codes = _codes(torch.float8_e4m3fn)
    ours, torchs = cast_weight(codes, target, "cpu"), codes.to(target)
    assert torch.equal(ours.isnan(), torchs.isnan()) and ours.isnan().sum() == 2
    finite = ~torchs.isnan()
    assert torch.equal(ours[finite], torchs[finite])
    assert torch.equal(ours[finite].signbit(), torchs[finite].signbit())  # -0 stays -0


def test_fp8_storage_clamps_to_the_largest_finite_value():
    big = torch.tensor([1e6, -1e6, 3.0])
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        stored = to_storage_dtype(big, dtype).to(torch.float32)
        assert stored.isfinite().all() and stored[0] == torch.finfo(dtype).max and stored[1] == -torch.finfo(dtype).max
    assert big.to(torch.float8_e5m2).to(torch.float32).isinf().any()  # what a plain cast does


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.Flatten(1), nn.LayerNorm(8 * 16),
                         nn.Linear(8 * 16, 5))


def test_use_layers_swaps_classes_in_place_and_keeps_parameters():
    network = _network()
    before = {name: tensor for name, tensor in network.state_dict(keep_vars=True).items()}
    x = torch.randn(2, 3, 4, 4)
    expected = network(x)
    assert use_layers(network, CastingLayers) is network
    assert all(isinstance(m, CastingLayer) for m in network if not isinstance(m, nn.Flatten))
    assert all(network.state_dict(keep_vars=True)[name] is tensor for name, tensor in before.items())
    assert torch.equal(network(x), expected)  # weights already in the input's dtype: the plain forward


def test_casting_layers_compute_with_stored_weights_cast_to_the_input():
    network = use_layers(_network(), CastingLayers)
    reference = _network()
    dtypes = storage_dtypes(network, torch.bfloat16, torch.float32)
    assert dtypes["0.weight"] == dtypes["4.weight"] == torch.bfloat16
    assert dtypes["1.weight"] == dtypes["3.bias"] == torch.float32  # norms keep the compute dtype
    for name, tensor in list(network.named_parameters()):
        tensor.data = to_storage_dtype(tensor.data, dtypes[name])
    assert any(dtype == torch.float32 for dtype in dtypes.values())
    for name, tensor in reference.named_parameters():  # the same rounding, computed by plain layers in fp32
        tensor.data = tensor.data.to(dtypes[name]).float()
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(network(x), reference(x))


def test_use_layers_refuses_a_namespace_that_does_not_subclass():
    class Wrong:
        Linear = nn.Conv2d

    with pytest.raises(TypeError, match="does not subclass"):
        use_layers(nn.Sequential(nn.Linear(2, 2)), Wrong)


def test_layer_weights_leave_patched_or_casting_comfy_layers_to_their_own_forward():
    class ComfyLike(nn.Linear):
        comfy_cast_weights = False
        weight_function = []
        bias_function = []

    layer = nn.Linear(3, 3)
    layer.__class__ = ComfyLike
    x = torch.randn(2, 3)
    assert layer_weights(layer, x) == (layer.weight, layer.bias)
    layer.comfy_cast_weights = True
    assert layer_weights(layer, x) is None
