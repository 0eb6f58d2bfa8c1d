"""What survives from clip to clip of a generation, and its file format.

A `GenerationState` holds the motion memory, the last generated frames and the noise
generator; with it a generation continues exactly where it stopped. `save` writes one
safetensors file whose metadata says what the state belongs to; `load` checks everything it
reads, and `check_compatible` checks a loaded state against the models and settings it is
about to continue with.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import uuid
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file

from .loading import GENERATION_NETWORKS
from .models.motion_memory import MEMORY_DECAY, MotionMemory

STATE_FORMAT = "memo-generation-state"
RECORD_KEYS = ("checkpoint_fingerprint", "weights_fingerprint", "clip_frames", "settings.fps", "settings.steps",
               "settings.guidance_scale", "settings.past_frames", "settings.resolution", "settings.audio_frames",
               "weight_dtype")
"""What a state records of the generation that made it (`GenerationState.record`): every setting that
shapes the remaining clips; `check_compatible` refuses a run that differs in any of them."""
RECORDED_BEFORE = {"weight_dtype": "default"}
"""Keys newer than the state format, with the value every state saved without them was made with
(weights stored in a smaller dtype did not exist then)."""
LIBRARY_KEYS = frozenset({"format", "next_clip", "decay", "past_frames_layout", "video_file", *RECORD_KEYS})
"""Metadata keys written by the library itself; every other key is the caller's."""


class StateError(ValueError):
    """A state file that cannot be read, or a state that cannot continue this generation."""


def checkpoint_fingerprint(models) -> str:
    """Short hash of the configs of a `MemoModels` (what shapes and numbers a state depends on)."""
    parts = {}
    for name in GENERATION_NETWORKS:
        config = {k: v for k, v in dict(getattr(models, name).config).items() if not k.startswith("_")}
        parts[name] = config
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_fingerprint(models) -> str:
    """Short hash that tells two checkpoints with the same configs apart.

    Models loaded from files carry the fingerprint of those files (`loading.weights_fingerprint`,
    computed once at load, independent of the dtype they were loaded in); models built in memory
    are hashed from a sample of their parameters instead."""
    recorded = getattr(models, "weights_fingerprint", None)
    if recorded:
        return recorded
    digest = hashlib.sha256(b"in-memory")
    for name in GENERATION_NETWORKS:
        for key, tensor in sorted(getattr(models, name).state_dict().items()):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // 64)
            sample = flat[::step][:64].float().cpu().contiguous()
            digest.update(f"{name}.{key}:{tuple(tensor.shape)}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def _weight_dtype_of(models) -> str:
    """The `layers.WEIGHT_DTYPES` name the models' layer weights are stored in ("default": the
    compute dtype). Stored weights change every later clip, so a state records it."""
    from .layers import weight_dtype_name

    return weight_dtype_name(getattr(models, "weight_dtype", None))


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

    @staticmethod
    def record(models, settings, resolution: int, audio_frames: int) -> dict[str, str]:
        """Metadata that lets `check_compatible` refuse a run that would continue this generation
        differently: the checkpoint (configs and weights) and every setting that shapes later clips.
        `MemoPipeline.generate` stamps it on every state it yields."""
        return {"checkpoint_fingerprint": checkpoint_fingerprint(models), "weights_fingerprint": weights_fingerprint(models),
                "clip_frames": str(int(settings.frames_per_clip)), "settings.fps": repr(float(settings.fps)),
                "settings.steps": str(int(settings.steps)), "settings.guidance_scale": repr(float(settings.guidance_scale)),
                "settings.past_frames": str(int(settings.past_frames)), "settings.resolution": str(int(resolution)),
                "settings.audio_frames": str(int(audio_frames)), "weight_dtype": _weight_dtype_of(models)}

    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """safetensors file; `metadata` (strings) is stored alongside, e.g. what generation this continues.

        The file appears whole or not at all (written under a hidden name, then renamed), with the
        permissions a new file gets in this process (the umask), as the video beside it. A failed
        write (e.g. a full disk) is an `OSError` naming `path`, and leaves any older file there as it was.

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
        write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

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
            # Z sums decay-weighted softmax keys: each entry lies in [0, 1 / (1 - decay)]
            bound = 1.0 / (1.0 - decay) * 1.01 if decay < 1 else math.inf
            if bool((z < 0).any()) or bool((z.float() > bound).any()):
                raise StateError(f"state {path}: motion memory '{name}' holds key sums outside [0, {bound:.3g}], "
                                 "which no generation writes (an edited file?)")
        if next_clip == 0 and (past is not None or not memory.is_empty):
            raise StateError(f"state {path} says no clip is done (next_clip 0) but holds a motion memory or past "
                             "frames: no generation writes that (an edited file?)")
        if next_clip > 0 and (past is None or memory.is_empty):
            raise StateError(f"state {path} continues after clip {next_clip} but lacks the motion memory or past frames")
        if past is not None:
            if past.dim() != 4 or past.shape[0] < 1 or past.shape[1] != 3:
                raise StateError(f"state {path}: past frames have shape {tuple(past.shape)}, expected (n, 3, H, W)")
            if not torch.isfinite(past).all():
                raise StateError(f"state {path}: past frames hold NaN/inf values")
            if bool((past < 0).any()) or bool((past > 1).any()):
                raise StateError(f"state {path}: past frames hold values outside [0, 1] (from {float(past.min()):g} to "
                                 f"{float(past.max()):g}); decoded frames never do (an edited file?)")
            past = past.float()
            if meta.get("past_frames_layout") == "channels_last":
                past = past.to(memory_format=torch.channels_last)
        return cls(memory, past, next_clip, rng_state, meta)

    def check_compatible(self, models, settings, num_clips: int, resolution: int, audio_frames: int | None = None) -> None:
        """Raise `StateError` unless this state can continue a generation with these models and
        settings (`GenerationSettings`): the one compatibility check, used by every caller through
        `MemoPipeline.check_inputs`. `resolution` 0 = unknown; `audio_frames`: the video length."""
        frames_per_clip, past_frames = settings.frames_per_clip, settings.past_frames
        if self.next_clip >= num_clips:
            raise StateError(f"the state continues after clip {self.next_clip}, but this audio has only {num_clips} "
                             f"clip(s) of {frames_per_clip} frames: nothing is left to generate (the generation is "
                             "already complete, or this is another audio)")
        if self.next_clip == 0:
            if not self.memory.is_empty or self.past_frames is not None:
                raise StateError("the state says no clip is done (next_clip 0) but holds a motion memory or past "
                                 "frames: no generation writes that (an edited file?)")
            return
        self._check_record(models, settings, resolution, audio_frames)
        if self.memory.decay != MEMORY_DECAY:
            raise StateError(f"the state's memory decay is {self.memory.decay!r}; MEMO's is {MEMORY_DECAY!r} (an edited file?)")
        if self.past_frames is not None:
            height, width = self.past_frames.shape[-2:]
            if resolution and (height, width) != (resolution, resolution):
                raise StateError(f"the state holds {width}x{height} frames but the video is {resolution}x{resolution}")
            wanted = min(past_frames, frames_per_clip)
            if self.past_frames.shape[0] != wanted:
                raise StateError(f"the state keeps {self.past_frames.shape[0]} past frames, a generation with "
                                 f"past_frames {past_frames} and {frames_per_clip} frames per clip keeps {wanted}")
        if self.memory.is_empty:
            return
        layers = memory_layers(models.diffusion_net)
        if set(self.memory.kv) != set(layers):
            raise StateError("the state's motion memory names other layers than this checkpoint's diffusion net "
                             "(made with another checkpoint)")
        if resolution <= 0:  # unknown here: the layer sizes cannot be checked
            return
        copies = 2 if settings.guidance_scale > 1 else 1
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


    def _check_record(self, models, settings, resolution: int, audio_frames: int | None) -> None:
        """Every recorded setting must equal this run's (see `record`); a missing record is refused."""
        ours = {"checkpoint_fingerprint": checkpoint_fingerprint(models), "weights_fingerprint": weights_fingerprint(models),
                "clip_frames": int(settings.frames_per_clip), "settings.fps": float(settings.fps),
                "settings.steps": int(settings.steps), "settings.guidance_scale": float(settings.guidance_scale),
                "settings.past_frames": int(settings.past_frames), "settings.resolution": int(resolution) or None,
                "settings.audio_frames": audio_frames, "weight_dtype": _weight_dtype_of(models)}
        names = {"checkpoint_fingerprint": "checkpoint (config fingerprint)", "weights_fingerprint":
                 "checkpoint weights (fingerprint)", "clip_frames": "frames_per_clip", "settings.fps": "fps",
                 "settings.steps": "steps", "settings.guidance_scale": "guidance_scale (cfg)",
                 "settings.past_frames": "past_frames", "settings.resolution": "resolution",
                 "settings.audio_frames": "audio length (frames)", "weight_dtype": "weight_dtype"}
        for key in RECORD_KEYS:
            wanted = ours[key]
            if wanted is None:  # not known to this caller
                continue
            if key not in self.metadata and key in RECORDED_BEFORE:
                text = RECORDED_BEFORE[key]
            elif key not in self.metadata:
                raise StateError(f"the state does not record its {names[key]} (saved by an older version, or edited): "
                                 "it cannot be checked against this run")
            else:
                text = self.metadata[key]
            try:
                value = type(wanted)(text)
            except ValueError:
                raise StateError(f"the state records {names[key]} as {text!r}, not a valid value (an edited file?)") from None
            if isinstance(wanted, float):
                same = math.isfinite(value) and abs(value - wanted) <= 1e-9 * max(1.0, abs(wanted))
                shown = f"{wanted:g}"
            else:
                same, shown = value == wanted, str(wanted)
            if same:
                continue
            if key.endswith("fingerprint"):
                raise StateError(f"the state was made with another MEMO checkpoint: its {names[key]} {text} != "
                                 f"{wanted}; resume with the checkpoint that made it")
            raise StateError(f"the state was made with {names[key]} {text}, this run asks for {shown}; resume with "
                             "the same setting (and the same audio)")


def write_atomically(path: str | os.PathLike, write) -> None:
    """Call `write(temporary_path)` and move the result to `path` in one rename, so a reader (or a
    second Ctrl-C) never sees half a file. The temporary file is created first with mode 0666
    filtered by the umask, as any new file of this process (the video beside it included). A failed
    write is an `OSError` naming `path` (with the system's error number when the writer gave one)."""
    from safetensors import SafetensorError

    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.part")
    try:
        descriptor = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        mode = os.fstat(descriptor).st_mode & 0o777  # what the umask allows a new file
        os.close(descriptor)
        write(tmp)
        os.chmod(tmp, mode)  # the writer may have made the file anew, with its own mode
        os.replace(tmp, path)
    except (SafetensorError, OSError) as err:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and err.errno is not None:
            raise OSError(err.errno, os.strerror(err.errno), path) from err
        found = re.search(r"os error (\d+)", str(err))
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(code, os.strerror(code), path) from err


def _layout(frames: torch.Tensor) -> str:
    if frames.dim() == 4 and not frames.is_contiguous() and frames.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "contiguous"
