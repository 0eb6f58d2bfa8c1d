"""Per-clip constants of the diffusion net as plain data, like `MotionMemory`.

Within one clip the reference-image tokens, the face tokens and the emotion label are the same at
every denoising step, so their key/value projections and emotion modulations need computing only
once per clip. `DiffusionNet.prepare_clip` fills a `ClipConstants`; the caller passes it to every
step of that clip and drops it afterwards. Entries are keyed by the module path of the layer that
owns them (set by `name_slots`), so the network itself stays stateless and a cached model gives
identical results on every run. Without constants every layer computes the same values in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ClipConstants:
    entries: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)

    def put(self, name: str, *tensors: torch.Tensor) -> None:
        if name in self.entries:
            raise ValueError(f"clip constants for '{name}' were already computed")
        self.entries[name] = tensors

    def get(self, name: str) -> tuple[torch.Tensor, ...] | None:
        return self.entries.get(name)

    def __len__(self) -> int:
        return len(self.entries)


def name_slots(root: nn.Module) -> None:
    """Give every module below `root` that keeps per-call data elsewhere (an attribute `slot_name`)
    its module path as the key of that data in `MotionMemory` / `ClipConstants`."""
    for name, module in root.named_modules():
        if hasattr(module, "slot_name"):
            module.slot_name = name
