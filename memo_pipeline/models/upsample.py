"""Nearest 2x upsampling followed by a 3x3 convolution, computed without the upsampled image.

Every UNet level on the way up (diffusion net, reference net, VAE decoder) doubles its feature
map with nearest-neighbour interpolation and then applies a 3x3 convolution. On the doubled image
each 3x3 window covers only 2x2 distinct input pixels, so each of the four output phases
(even/odd row, even/odd column) is a 2x2 convolution of the *input* with kernel taps summed
accordingly: 16 multiply-adds per input pixel and channel pair instead of 36, the same sums
grouped differently (equal within rounding). `PhaseUpsample2D` is diffusers' `Upsample2D` with
that forward on CPUs (same parameters and state-dict keys); elsewhere, for other output sizes and
for small maps, where summing the four kernels does not pay for itself, it runs the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D
from torch import nn

MIN_POSITIONS = 256
"""Fewest input positions (batch x height x width) that take the phase path. The four kernels
are summed at every call (keeping them would cost memory), which only pays on enough positions.
Measured on the 2-core CPU, original vs phases: 32 x 1280 ch at 4x4 236 vs 181 ms, 32 x 640 ch at
8x8 271 vs 142 ms, one VAE frame of 512 ch at 16x16 / 32x32 and 256 ch at 64x64 25 / 94 / 89 vs
19 / 51 / 50 ms; but 32 x 1280 ch at 2x2 55 vs 90 ms and 2 x 1280 ch at 4x4 21 vs 63 ms."""


def _fold(weight: torch.Tensor, dim: int, phase: int) -> torch.Tensor:
    """Sum the 3 taps of `dim` into the 2 that one phase of the doubled image sees."""
    first, middle, last = weight.unbind(dim)
    return torch.stack((first, middle + last) if phase == 0 else (first + middle, last), dim)


def nearest_upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)` for a
    3x3 `weight`: output pixel `(2i+a, 2j+b)` reads input rows `i-1, i` (a=0) or `i, i+1` (a=1)
    and likewise for columns, so phase `(a, b)` is a 2x2 convolution of `x` padded on that side."""
    n, _, h, w = x.shape
    out = x.new_empty(n, weight.shape[0], h, 2, w, 2)
    for a in (0, 1):
        rows = _fold(weight, 2, a)
        for b in (0, 1):
            padded = F.pad(x, (1 - b, b, 1 - a, a))  # (left, right, top, bottom)
            out[:, :, :, a, :, b] = F.conv2d(padded, _fold(rows, 3, b), bias)
    return out.view(n, weight.shape[0], 2 * h, 2 * w)


class PhaseUpsample2D(Upsample2D):
    """`Upsample2D` (nearest interpolation + 3x3 convolution) computed by `nearest_upsample_conv`."""

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        h, w = hidden_states.shape[-2:]
        doubled = output_size is None or tuple(output_size) == (2 * h, 2 * w)
        small = hidden_states.shape[0] * h * w < MIN_POSITIONS
        if args or kwargs or not doubled or small or hidden_states.device.type != "cpu":
            return super().forward(hidden_states, output_size, *args, **kwargs)
        return nearest_upsample_conv(hidden_states, self.conv.weight, self.conv.bias)


def _eligible(module: nn.Module) -> bool:
    conv = getattr(module, "conv", None)
    return (type(module) is Upsample2D and module.use_conv and not module.use_conv_transpose and module.interpolate
            and module.norm is None and module.name == "conv" and isinstance(conv, nn.Conv2d)
            and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


def use_phase_upsampling(model: nn.Module) -> int:
    """Give every plain `Upsample2D` in `model` the phase forward (its parameters stay the same
    objects); returns how many were changed."""
    changed = 0
    for module in model.modules():
        if _eligible(module):
            module.__class__ = PhaseUpsample2D
            changed += 1
    return changed
