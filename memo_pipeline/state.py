"""What survives from clip to clip of a generation, and its file format.

A `GenerationState` holds the motion memory, the last generated frames and the noise
generator; with it a generation continues exactly where it stopped. `save` writes one
safetensors file whose metadata says what the state belongs to; `load` checks everything it
reads, and `check_compatible` checks a loaded state against the models and settings it is
about to continue with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from .models.motion_memory import MotionMemory

STATE_FORMAT = "memo-generation-state"
LIBRARY_KEYS = frozenset({"format", "next_clip", "decay", "past_frames_layout"})
"""Metadata keys written by `GenerationState.save` itself; every other key is the caller's."""


@dataclass
class GenerationState:
    """Everything needed to continue a generation after `next_clip - 1` clips."""

    memory: MotionMemory
    past_frames: torch.Tensor | None  # (n, 3, H, W) float32 in [0, 1], the last generated frames
    next_clip: int
    rng_state: torch.Tensor  # CPU generator state for the remaining noise draws

    def to(self, device=None) -> "GenerationState":
        """A detached copy on `device`: continuing the generation never changes it (tensors are
        replaced, not modified in place, so unchanged ones may be shared)."""
        past = None if self.past_frames is None else self.past_frames.to(device).clone()
        return GenerationState(self.memory.to(device), past, self.next_clip, self.rng_state.clone())

    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """safetensors file; `metadata` (strings) is stored alongside, e.g. what generation this continues.

        The frames are stored contiguously; their in-memory layout (the VAE decodes channels-last)
        is recorded so that `load` gives back the same strides: the VAE picks its convolution
        kernels by layout, and another kernel would change the resumed video in the last bits.
        """
        tensors = {f"memory.{k}": v.detach().cpu().contiguous() for k, v in self.memory.state_dict().items()}
        tensors["rng_state"] = self.rng_state.clone()
        meta = {**(metadata or {}), "format": STATE_FORMAT, "next_clip": str(self.next_clip),
                "decay": repr(self.memory.decay)}
        if self.past_frames is not None:
            tensors["past_frames"] = self.past_frames.detach().cpu().float().contiguous()
            meta["past_frames_layout"] = _layout(self.past_frames)
        save_file(tensors, os.fspath(path), metadata=meta)

    @staticmethod
    def read_metadata(path: str | os.PathLike) -> dict[str, str]:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(os.fspath(path), framework="pt") as f:
                return dict(f.metadata() or {})
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read generation state {path}: {err}") from err

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GenerationState":
        meta = cls.read_metadata(path)
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not a saved MEMO generation state")
        tensors = load_file(os.fspath(path))
        memory = MotionMemory.from_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("memory.")},
                                              float(meta["decay"]))
        past = tensors.get("past_frames")
        if past is not None and meta.get("past_frames_layout") == "channels_last":
            past = past.to(memory_format=torch.channels_last)
        return cls(memory, past, int(meta["next_clip"]), tensors["rng_state"])


def _layout(frames: torch.Tensor) -> str:
    if frames.dim() == 4 and not frames.is_contiguous() and frames.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "contiguous"
