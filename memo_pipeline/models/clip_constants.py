"""Per-clip constants of the diffusion net as plain data, like `MotionMemory`.

Within one clip the reference-image tokens, the face tokens and the emotion label are the same at
every denoising step, so their key/value projections and emotion modulations need computing only
once per clip. The caller makes an empty `ClipConstants` per clip and passes it to every step of
that clip: each layer computes its entry during the first step (inside the network's forward, so
a model manager that loads networks on their forward sees the work) and reads it at the later
steps. Entries are keyed by the module path of the layer that owns them (set by `name_slots`), so
the network itself stays stateless and a cached model gives identical results on every run.
Without a `ClipConstants` every layer computes the same values at every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass
class ClipConstants:
    entries: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)

    def get_or_compute(self, name: str, compute: Callable[[], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        if name not in self.entries:
            self.entries[name] = tuple(compute())
        return self.entries[name]

    def __len__(self) -> int:
        return len(self.entries)


def clip_constant(constants: ClipConstants | None, name: str, compute: Callable[[], tuple[torch.Tensor, ...]]):
    """`compute()`, computed once per clip when a `ClipConstants` is given, at every call otherwise."""
    return tuple(compute()) if constants is None else constants.get_or_compute(name, compute)


def name_slots(root: nn.Module) -> None:
    """Give every module below `root` that keeps per-call data elsewhere (an attribute `slot_name`)
    its module path as the key of that data in `MotionMemory` / `ClipConstants`."""
    for name, module in root.named_modules():
        if hasattr(module, "slot_name"):
            module.slot_name = name
