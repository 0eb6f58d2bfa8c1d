"""The motion memory of MEMO's temporal layers as plain data.

Every memory-guided linear attention layer keeps two tensors that summarise all past motion
frames of the current audio track: `KV` (sum of k^T v over past frames) and `Z` (sum of k).
The official code hides them inside attention-processor objects; here they live in one
`MotionMemory` object that the caller owns, passes to the diffusion net, and can reset, copy,
move between devices and save/load with safetensors. The network itself stays stateless, so a
cached model gives identical results on every run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file

MEMORY_DECAY = 0.9
"""Per-frame decay of past motion (fixed in the released model, not a config value)."""


@dataclass
class MotionMemory:
    """`kv[name]`: `(batch*tokens*heads, head_dim, head_dim)`; `z[name]`: `(batch*tokens*heads, 1, head_dim)`.

    `name` is the module path of the attention layer inside the diffusion net.
    """

    kv: dict[str, torch.Tensor] = field(default_factory=dict)
    z: dict[str, torch.Tensor] = field(default_factory=dict)
    decay: float = MEMORY_DECAY
    dtype: torch.dtype | None = None
    """Precision of the memory and of the linear attention that reads it; None = the network's
    compute dtype. float32 keeps a bf16/fp16 run's memory from rounding as it accumulates."""
    home: torch.device | None = None
    """Where the tensors wait between uses; None = where the layers computed them. Under offload
    the host (`offload.apply_offload`): the memory is as large as the networks at 512 px, and each
    layer then brings only its own slot to the device while it runs (`read`, `absorb`)."""

    def __len__(self) -> int:
        return len(self.kv)

    @property
    def is_empty(self) -> bool:
        return not self.kv

    def reset(self) -> "MotionMemory":
        """Forget everything (a new audio track starts)."""
        self.kv.clear()
        self.z.clear()
        return self

    def forget(self, name: str) -> None:
        self.kv.pop(name, None)
        self.z.pop(name, None)

    def absorb(self, name: str, kv_new: torch.Tensor, z_new: torch.Tensor, num_frames: int) -> None:
        """Add the (already decay-weighted) summary of `num_frames` new motion frames.

        What was stored before ages by `decay ** num_frames`, as if those frames had passed.
        """
        if name in self.kv:
            age = self.decay**num_frames
            kv_new = self.kv[name].to(kv_new.device) * age + kv_new
            z_new = self.z[name].to(z_new.device) * age + z_new
        self.kv[name], self.z[name] = self._kept(kv_new), self._kept(z_new)

    def _kept(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.home is None else tensor.to(self.home)

    def read(self, name: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The slot `name` on `device` (None: where it is kept)."""
        if name not in self.kv:
            raise RuntimeError(
                f"motion memory has no state for '{name}': the first denoising step of an audio track "
                "must write the memory (update='reset' on a track's first clip, 'append' on later clips) before 'read' steps"
            )
        kv, z = self.kv[name], self.z[name]
        return (kv, z) if device is None else (kv.to(device), z.to(device))

    def copy(self) -> "MotionMemory":
        return MotionMemory({k: v.clone() for k, v in self.kv.items()}, {k: v.clone() for k, v in self.z.items()}, self.decay,
                            self.dtype, self.home)

    def to(self, device=None, dtype=None) -> "MotionMemory":
        """A copy on another device / dtype (the original is left untouched); it keeps its tensors
        where they are put (`home` None)."""
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return MotionMemory({k: move(v) for k, v in self.kv.items()}, {k: move(v) for k, v in self.z.items()}, self.decay,
                            self.dtype if dtype is None else dtype)

    def slot_bytes(self) -> int:
        """Bytes of the largest slot (one layer's KV and Z): what a layer brings to the device when
        the memory is kept elsewhere."""
        return max((self.kv[k].untyped_storage().nbytes() + self.z[k].untyped_storage().nbytes() for k in self.kv), default=0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {f"kv.{k}": v.contiguous() for k, v in self.kv.items()}
        tensors.update({f"z.{k}": v.contiguous() for k, v in self.z.items()})
        return tensors

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], decay: float = MEMORY_DECAY) -> "MotionMemory":
        memory = cls(decay=decay)
        for key, value in tensors.items():
            kind, _, name = key.partition(".")
            if kind not in ("kv", "z") or not name:
                raise ValueError(f"unexpected motion-memory entry '{key}'")
            getattr(memory, kind)[name] = value
        if memory.kv.keys() != memory.z.keys():
            raise ValueError("motion memory is incomplete: KV and Z entries name different layers")
        return memory

    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        meta = {"format": "memo-motion-memory", "decay": repr(self.decay), **(metadata or {})}
        save_file(self.state_dict(), os.fspath(path), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "MotionMemory":
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != "memo-motion-memory":
                raise ValueError(f"{path} is not a saved MEMO motion memory")
        return cls.from_state_dict(load_file(os.fspath(path), device=str(device)), float(meta.get("decay", MEMORY_DECAY)))
