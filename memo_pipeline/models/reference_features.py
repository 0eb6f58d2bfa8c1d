"""The reference net's output as the diffusion net consumes it: one tensor per diffusion-net layer.

The reference net sees a stack of `copies * (1 + P)` images per clip (copy-major: for every CFG
copy, the reference image followed by the `P` motion frames). For a layer with cross-attention
its feature is the tokens of the layer's transformer right after the first LayerNorm
(`(rows, h*w, c)`); for a plain layer it is the resnet output (`(rows, c, h, w)`). Each
diffusion-net layer splits its feature into the reference-image tokens (used by the spatial
attention at every step) and the motion frames (used by the motion memory when it is written).
See docs/architecture.md#reference-features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Tensor = torch.Tensor


@dataclass
class ReferenceFeatures:
    down: list[list[Tensor]]  # [level][layer]
    mid: list[Tensor]  # [layer]
    up: list[list[Tensor]]  # [level][layer]

    def map(self, fn: Callable[[Tensor], Tensor]) -> "ReferenceFeatures":
        return ReferenceFeatures([[fn(t) for t in level] for level in self.down], [fn(t) for t in self.mid],
                                 [[fn(t) for t in level] for level in self.up])

    def tensors(self) -> list[Tensor]:
        """Every feature, in network order (down levels, mid, up levels)."""
        return [t for level in self.down for t in level] + list(self.mid) + [t for level in self.up for t in level]

    @staticmethod
    def interleave(reference: "ReferenceFeatures", motion: "ReferenceFeatures", copies: int) -> "ReferenceFeatures":
        """Merge per-copy reference rows `(copies, ...)` and motion rows `(copies * P, ...)` into
        the copy-major `(copies * (1 + P), ...)` stack."""
        pairs = iter(zip(reference.tensors(), motion.tensors()))

        def merge(_):
            ref, mot = next(pairs)
            ref_rows = ref.reshape(copies, 1, *ref.shape[1:])
            mot_rows = mot.reshape(copies, -1, *mot.shape[1:])
            return torch.cat([ref_rows, mot_rows], dim=1).reshape(-1, *ref.shape[1:])

        return reference.map(merge)


def reference_rows(feature: Tensor, batch: int) -> Tensor:
    """The reference image's row of one layer's feature: row 0 of every CFG copy's stack, `(batch, ...)` (a view)."""
    return feature.reshape(batch, -1, *feature.shape[1:])[:, 0]


def reference_tokens(feature: Tensor, batch: int) -> Tensor | None:
    """The reference image's tokens `(batch, h*w, c)` of one layer's feature, or None for a plain
    layer (its feature is a resnet map)."""
    if feature.dim() != 3:
        return None
    return reference_rows(feature, batch)


def motion_frames(feature: Tensor, batch: int, height: int, width: int) -> Tensor:
    """The motion frames of one layer's feature, folded as `(batch * P, c, h, w)`."""
    stack = feature.shape[0] // batch
    if stack < 2:
        raise ValueError("these reference features hold no motion frames (a clip's inputs drop them after the "
                         "first step, which writes the motion memory)")
    if feature.dim() == 3:
        tokens = feature.reshape(batch, stack, height, width, feature.shape[-1])[:, 1:]
        return tokens.reshape(batch * (stack - 1), height, width, feature.shape[-1]).permute(0, 3, 1, 2)
    return feature.reshape(batch, stack, *feature.shape[1:])[:, 1:].reshape(batch * (stack - 1), *feature.shape[1:])
