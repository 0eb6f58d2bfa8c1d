"""What survives from clip to clip of a generation, and its file format.

A `GenerationState` holds the motion memory, the last generated frames and the noise
generator; with it a generation continues exactly where it stopped. `save` writes one
safetensors file whose metadata says what the state belongs to; `load` checks everything it
reads, and `check_compatible` checks a loaded state against the models and settings it is
about to continue with.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file

from .models.motion_memory import MotionMemory

STATE_FORMAT = "memo-generation-state"
LIBRARY_KEYS = frozenset({"format", "next_clip", "decay", "past_frames_layout", "checkpoint_fingerprint", "clip_frames"})
"""Metadata keys written by `GenerationState.save` itself; every other key is the caller's."""


class StateError(ValueError):
    """A state file that cannot be read, or a state that cannot continue this generation."""


def checkpoint_fingerprint(models) -> str:
    """Short hash of the configs of a `MemoModels` (what shapes and numbers a state depends on)."""
    parts = {}
    for name in ("reference_net", "diffusion_net", "image_proj", "audio_proj"):
        config = {k: v for k, v in dict(getattr(models, name).config).items() if not k.startswith("_")}
        parts[name] = config
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def memory_layers(diffusion_net) -> dict[str, tuple[int, int]]:
    """Motion-memory slot name -> (heads, head_dim) of every memory attention of a diffusion net."""
    from .models.motion_module import MemoryLinearAttention

    return {m.slot_name: (m.heads, m.head_dim) for m in diffusion_net.modules() if isinstance(m, MemoryLinearAttention)}


@dataclass
class GenerationState:
    """Everything needed to continue a generation after `next_clip - 1` clips."""

    memory: MotionMemory
    past_frames: torch.Tensor | None  # (n, 3, H, W) float32 in [0, 1], the last generated frames
    next_clip: int
    rng_state: torch.Tensor  # CPU generator state for the remaining noise draws
    metadata: dict[str, str] = field(default_factory=dict)  # what a loaded state was saved with

    def to(self, device=None) -> "GenerationState":
        """A detached copy on `device`: continuing the generation never changes it (tensors are
        replaced, not modified in place, so unchanged ones may be shared)."""
        past = None if self.past_frames is None else self.past_frames.to(device).clone()
        return GenerationState(self.memory.to(device), past, self.next_clip, self.rng_state.clone(), dict(self.metadata))

    def snapshot(self) -> "GenerationState":
        """This state frozen as it is now, without copying tensors.

        A `ClipOutput.state` shares the live motion memory, which the next clip updates; the
        memory replaces its tensors rather than writing into them, so copying its two dicts is
        enough to keep this clip's state (e.g. to save it if the run stops during the next clip)."""
        memory = MotionMemory(dict(self.memory.kv), dict(self.memory.z), self.memory.decay)
        return GenerationState(memory, self.past_frames, self.next_clip, self.rng_state.clone(), dict(self.metadata))

    @staticmethod
    def describe(models, frames_per_clip: int) -> dict[str, str]:
        """Metadata that lets `check_compatible` refuse a state from another checkpoint or clip size."""
        return {"checkpoint_fingerprint": checkpoint_fingerprint(models), "clip_frames": str(int(frames_per_clip))}

    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """safetensors file; `metadata` (strings) is stored alongside, e.g. what generation this continues.

        The frames are stored contiguously; their in-memory layout (the VAE decodes channels-last)
        is recorded so that `load` gives back the same strides: the VAE picks its convolution
        kernels by layout, and another kernel would change the resumed video in the last bits.
        """
        tensors = {f"memory.{k}": v.detach().cpu().contiguous() for k, v in self.memory.state_dict().items()}
        tensors["rng_state"] = self.rng_state.clone()
        meta = {**self.metadata, **(metadata or {}), "format": STATE_FORMAT, "next_clip": str(self.next_clip),
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
        """Read and check a state file; anything missing, malformed or non-finite is a `StateError`."""
        from safetensors import SafetensorError

        try:
            meta = cls.read_metadata(path)
        except ValueError as err:
            raise StateError(str(err)) from err
        if meta.get("format") != STATE_FORMAT:
            raise StateError(f"{path} is not a saved MEMO generation state")
        for key in ("next_clip", "decay"):
            if key not in meta:
                raise StateError(f"state {path} is incomplete: its metadata has no '{key}'")
        try:
            next_clip, decay = int(meta["next_clip"]), float(meta["decay"])
        except ValueError:
            raise StateError(f"state {path}: next_clip {meta['next_clip']!r} / decay {meta['decay']!r} are not numbers") from None
        if next_clip < 0 or not (math.isfinite(decay) and 0 < decay <= 1):
            raise StateError(f"state {path}: next_clip {next_clip} must be >= 0 and decay {decay} in (0, 1]")
        try:
            tensors = load_file(os.fspath(path))
        except (SafetensorError, OSError) as err:
            raise StateError(f"cannot read generation state {path}: {err}") from err

        if "rng_state" not in tensors:
            raise StateError(f"state {path} is incomplete: the noise generator state is missing")
        rng_state = tensors.pop("rng_state")
        try:
            torch.Generator().set_state(rng_state)
        except (RuntimeError, TypeError) as err:
            raise StateError(f"state {path}: the noise generator state is invalid ({err})") from None
        past = tensors.pop("past_frames", None)
        entries = {k[7:]: tensors.pop(k) for k in list(tensors) if k.startswith("memory.")}
        if tensors:
            raise StateError(f"state {path} holds unexpected tensors: {', '.join(sorted(tensors))}")
        try:
            memory = MotionMemory.from_state_dict(entries, decay)
        except ValueError as err:
            raise StateError(f"state {path}: {err}") from None
        for name in memory.kv:
            kv, z = memory.kv[name], memory.z[name]
            if kv.dim() != 3 or z.dim() != 3 or kv.shape[1] != kv.shape[2] or tuple(z.shape) != (kv.shape[0], 1, kv.shape[2]):
                raise StateError(f"state {path}: motion memory '{name}' has shapes {tuple(kv.shape)} / {tuple(z.shape)}, "
                                 "expected (n, d, d) / (n, 1, d)")
            if not (torch.isfinite(kv).all() and torch.isfinite(z).all()):
                raise StateError(f"state {path}: motion memory '{name}' holds NaN/inf values")
        if next_clip > 0 and (past is None or memory.is_empty):
            raise StateError(f"state {path} continues after clip {next_clip} but lacks the motion memory or past frames")
        if past is not None:
            if past.dim() != 4 or past.shape[0] < 1 or past.shape[1] != 3:
                raise StateError(f"state {path}: past frames have shape {tuple(past.shape)}, expected (n, 3, H, W)")
            if not torch.isfinite(past).all():
                raise StateError(f"state {path}: past frames hold NaN/inf values")
            past = past.float()
            if meta.get("past_frames_layout") == "channels_last":
                past = past.to(memory_format=torch.channels_last)
        return cls(memory, past, next_clip, rng_state, meta)

    def check_compatible(self, models, frames_per_clip: int, num_clips: int, resolution: int, past_frames: int,
                         guidance_scale: float) -> None:
        """Raise `StateError` unless this state can continue a generation with these models and settings."""
        if self.next_clip >= num_clips:
            raise StateError(f"the state continues after clip {self.next_clip}, but this audio has only {num_clips} "
                             f"clip(s) of {frames_per_clip} frames: nothing is left to generate (wrong audio or state?)")
        recorded = self.metadata.get("checkpoint_fingerprint")
        if recorded is not None and recorded != checkpoint_fingerprint(models):
            raise StateError("the state was made with another MEMO checkpoint (config fingerprint "
                             f"{recorded} != {checkpoint_fingerprint(models)}); resume with the checkpoint that made it")
        recorded = self.metadata.get("clip_frames")
        if recorded is not None and recorded != str(frames_per_clip):
            raise StateError(f"the state was made with {recorded} frames per clip, this run uses {frames_per_clip}")
        if self.past_frames is not None:
            height, width = self.past_frames.shape[-2:]
            if (height, width) != (resolution, resolution):
                raise StateError(f"the state holds {width}x{height} frames but the video is {resolution}x{resolution}")
            wanted = min(past_frames, frames_per_clip)
            if self.past_frames.shape[0] < wanted:
                raise StateError(f"the state keeps {self.past_frames.shape[0]} past frames, {wanted} are needed "
                                 f"(past_frames {past_frames})")
        if self.memory.is_empty:
            return
        layers = memory_layers(models.diffusion_net)
        if set(self.memory.kv) != set(layers):
            raise StateError("the state's motion memory names other layers than this checkpoint's diffusion net "
                             "(made with another checkpoint)")
        if resolution <= 0:  # unknown here: the layer sizes cannot be checked
            return
        copies = 2 if guidance_scale > 1 else 1
        side = resolution // 8
        sizes = {math.ceil(side / 2**k) ** 2 for k in range(6)}
        for name, (heads, head_dim) in layers.items():
            rows, dim = self.memory.kv[name].shape[0], self.memory.kv[name].shape[-1]
            if dim != head_dim:
                raise StateError(f"the state's motion memory '{name}' has head size {dim}, the checkpoint {head_dim}")
            if rows % (copies * heads) or rows // (copies * heads) not in sizes:
                raise StateError(f"the state's motion memory does not fit a {resolution}x{resolution} video with "
                                 f"{'two CFG passes' if copies == 2 else 'one pass (cfg <= 1)'}: was it made with "
                                 "another resolution or guidance scale?")


def _layout(frames: torch.Tensor) -> str:
    if frames.dim() == 4 and not frames.is_contiguous() and frames.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "contiguous"
