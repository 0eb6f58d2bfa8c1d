"""How much memory a generation will need, found before anything is loaded.

The networks are built on the meta device from their configs (the released ones, or a
checkpoint's config.json files: never its weights) and given FakeTensor parameters in their
storage dtypes. The pipeline's own code then runs the phases of one clip on FakeTensor inputs
(`clip_phases`): the reference features, one denoising step with its CFG batch, the VAE decode.
A TorchDispatchMode (`StorageTracker`) counts the bytes of every tensor storage that is alive,
each storage once, and frees it when its last tensor goes; its peak per phase is the phase's
activation memory. Weights are added by where the offload mode keeps them (`plan_memory`).
No data is computed: the cost is FakeTensor dispatch, about 0.5 ms per operator, 7 to 13 s for
the released networks at 512 px on the 2-core CI machine, a few for the tiny ones.

Why our own tracker rather than `torch.distributed._tools.mem_tracker.MemTracker` (same idea, and
it supports FakeTensorMode): after every operator MemTracker walks all tracked modules (module
hooks on the ~1,600-module UNets) and keeps per-module snapshots, it imports torch.distributed
(absent from some builds) and is a private, training-oriented API; what the plan needs (live
bytes, a peak per phase, plus value shadows for the few data-dependent operators, which MemTracker
has no place for) is the short class below.

Fake tensors live on the CPU: there PyTorch's attention runs its fused kernel, which allocates
only the output and its log-sum-exp, as the CUDA flash / memory-efficient kernels do (fake CUDA
tensors on a machine without a GPU fall back to the math kernel, which materialises the whole
attention matrix). What differs by device is passed explicitly (the VAE's frames per call).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import weakref
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

from .offload import OFFLOAD_MODES  # the one list of modes

RELEASED_CONFIGS = Path(__file__).resolve().parent / "released_configs"
"""config.json of each released MEMO network (the one home of these files; bench/configs.py reads them too)."""

PHASES = ("loading", "reference", "denoise", "decode")
PHASE_NETWORKS = {
    "reference": ("vae", "reference_net", "audio_proj", "image_proj"),
    "denoise": ("diffusion_net",),
    "decode": ("vae",),
}
"""The networks that run in each phase (with offload "model" only these are on the device)."""

CLOSE_FRACTION = 0.85
"""A plan needing more than this share of the free memory is "close": the run is attempted with a
warning, since allocator rounding, fragmentation and kernel workspaces (not planned) take the rest."""

GB = 1e9


# --------------------------------------------------------------------------------------------
# counting live storages


class StorageTracker(TorchDispatchMode):
    """Live and peak bytes of the tensor storages created while the mode is active.

    A storage is counted once however many tensors view it, and uncounted when it is freed (a
    weak reference's callback). `phase(name)` records the peak reached inside a block.

    Above a FakeTensorMode (`fake_mode`), small tensors also get a real "shadow" value computed
    on the side, so that the few operations whose result shape depends on values (a boolean
    mask's rows, `int(tensor)`, a scheduler's timestep lookup) run as they would for real; large
    tensors stay shape-only."""

    SHADOW_NUMEL = 4096
    """Largest tensor given a shadow value (masks, row indices, labels and timesteps are far smaller)."""

    def __init__(self, fake_mode=None):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.phase_peaks: dict[str, int] = {}
        self._seen = WeakIdKeyDictionary()
        self._fake_mode = fake_mode
        self._shadow = WeakIdKeyDictionary()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._fake_mode is None:
            out = func(*args, **kwargs)
        else:
            out = self._fake_dispatch(func, args, kwargs)
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.track(tensor)
        return out

    def _fake_dispatch(self, func, args, kwargs):
        from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

        shadows = self._shadow_arguments(func, args, kwargs)
        try:
            out = func(*args, **kwargs)
        except (DataDependentOutputException, DynamicOutputShapeException):
            if shadows is None:
                raise
            real = self._run_real(func, shadows)
            out = tree_map_only(torch.Tensor, self._fake_mode.from_tensor, real)
            self._remember(out, real)
            return out
        if shadows is not None and all(t.numel() <= self.SHADOW_NUMEL for t in tree_leaves(out)
                                       if isinstance(t, torch.Tensor)):
            self._remember(out, self._run_real(func, shadows))
        return out

    def _shadow_arguments(self, func, args, kwargs):
        """(args, kwargs) with every tensor replaced by its real value, or None where one has none."""
        from torch._subclasses.fake_tensor import FakeTensor

        def shadowed(value) -> bool:
            if isinstance(value, FakeTensor):
                return value in self._shadow
            if isinstance(value, (list, tuple)):
                return all(shadowed(item) for item in value)
            return True

        if not (shadowed(args) and shadowed(tuple(kwargs.values()))) or torch.Tag.nondeterministic_seeded in func.tags:
            return None
        return tree_map_only(FakeTensor, self._shadow.get, (args, kwargs))

    @staticmethod
    def _run_real(func, shadows):
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        args, kwargs = shadows
        with unset_fake_temporarily():
            return func(*args, **kwargs)

    def _remember(self, out, real) -> None:
        for fake, value in zip(tree_leaves(out), tree_leaves(real)):
            if isinstance(fake, torch.Tensor) and isinstance(value, torch.Tensor):
                self._shadow[fake] = value

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen[storage] = weakref.ref(storage, partial(self._freed, nbytes))
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def exclude(self, tensors) -> None:
        """Never count these tensors' storages (weights, added by the plan per offload mode), nor their views."""
        for tensor in tensors:
            self._seen[tensor.untyped_storage()] = None

    def _freed(self, nbytes: int, _ref) -> None:
        self.live -= nbytes

    @contextlib.contextmanager
    def phase(self, name: str):
        outer, self.peak = self.peak, self.live
        try:
            yield
        finally:
            self.phase_peaks[name] = max(self.phase_peaks.get(name, 0), self.peak)
            self.peak = max(outer, self.peak)


# --------------------------------------------------------------------------------------------
# the phases of a clip (shared by the plan and by the test that measures a real run)


def clip_phases(pipeline, settings, resolution: int, phase: Callable[[str], contextlib.AbstractContextManager]):
    """Two clips of one denoising step each, as `MemoPipeline.generate` makes them; the second
    clip (the steady state: motion memory written, motion frames VAE-encoded) runs inside
    `phase("reference")`, `phase("denoise")` and `phase("decode")`.

    The first clip only brings the state to where a later clip starts (the motion memory
    written, motion frames of the right shape); it runs with `cache_reference` off (same memory
    afterwards, and no value-dependent `unique`) and is not decoded."""
    from .pipeline import Conditioning, GenerationState

    models = pipeline.models
    device, dtype = models.device, models.dtype
    frames = settings.frames_per_clip
    one_step = dataclasses.replace(settings, steps=1)
    copies = 2 if settings.guidance_scale > 1 else 1
    layers, channels = models.audio_feature_shape
    audio = _Features(torch.zeros(2 * frames, 5, layers, channels))
    pixels = torch.zeros(1, 3, resolution, resolution)
    face = torch.zeros(1, models.face_embedding_width, device=device, dtype=dtype)
    tokens = models.image_proj(face)
    face_tokens = torch.cat([models.image_proj(torch.zeros_like(face)), tokens]) if copies == 2 else tokens
    cond = Conditioning(pixels.to(device), face_tokens, torch.zeros(2 * frames, dtype=torch.long), copies, 2)
    state, generator = pipeline.initial_state(settings, None, device)
    cache: dict = {}
    for clip in (0, 1):
        run = one_step if clip else dataclasses.replace(one_step, cache_reference=False)
        with phase("reference") if clip else contextlib.nullcontext():
            inputs = pipeline.prepare_clip(clip, cond, audio, state, run, cache if clip else {})
        with phase("denoise") if clip else contextlib.nullcontext():
            latents = pipeline.denoise_clip(clip, inputs, state.memory, generator, run, num_clips=2)
            del inputs
        if clip == 0:  # the frames a decode would give (float32, on the host), without decoding
            past = torch.zeros(min(settings.past_frames, frames), 3, resolution, resolution)
            del latents
        else:
            with phase("decode"):
                pipeline.decode_clip(latents)
                del latents
        state = GenerationState(state.memory, past, clip + 1, generator.get_state())
    return state


@dataclass
class _Features:
    """Audio windows of the shape `audio_proj` takes (values unused by the plan)."""

    audio_emb: torch.Tensor

    def __post_init__(self):
        self.num_frames = self.padded_frames = self.audio_emb.shape[0]

    def windows(self, start: int, stop: int) -> torch.Tensor:
        return self.audio_emb[start:stop]


# --------------------------------------------------------------------------------------------
# shape-only networks


def released_network_configs() -> dict[str, dict]:
    """Configs of the five released MEMO networks (shipped with the package)."""
    from .loading import COMPONENTS

    return {name: _strip(json.loads((RELEASED_CONFIGS / name / "config.json").read_text()))
            for name in COMPONENTS}


def checkpoint_network_configs(root: str | os.PathLike) -> dict[str, dict]:
    """Configs of a checkpoint's networks, read from its config.json files (never its weights)."""
    from .loading import COMPONENTS, CheckpointError, read_config

    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"MEMO checkpoint folder {root} does not exist")
    configs = {}
    for name, (sub, _, _) in COMPONENTS.items():
        if name == "emotion_classifier" and not (root / sub).is_dir():
            continue
        configs[name] = _strip(read_config(root / sub))
    return configs


def _strip(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def stored_as_loaded(network: torch.nn.Module, compute_dtype: torch.dtype, weight_dtype) -> dict[str, torch.dtype]:
    """The dtype each floating parameter and buffer of `network` is stored in, and (in place) the
    layer classes it runs with, as `loading.load_component` gives them: with a weight dtype the
    casting layers and `layers.storage_dtypes`, without one everything in the compute dtype."""
    from .layers import CastingLayers, resolve_weight_dtype, storage_dtypes, use_layers

    weight_dtype = resolve_weight_dtype(weight_dtype)
    if weight_dtype is not None:
        use_layers(network, CastingLayers)
    return storage_dtypes(network, weight_dtype, compute_dtype)


def _fake_network(network: torch.nn.Module, dtypes: dict[str, torch.dtype], mode) -> torch.nn.Module:
    """`network` (on the meta device) with FakeTensor parameters and buffers in their storage dtypes."""
    with mode:
        for module_name, module in network.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for table in (module._parameters, module._buffers):
                for name, tensor in list(table.items()):
                    if tensor is None:
                        continue
                    dtype = dtypes.get(prefix + name, tensor.dtype)
                    fake = torch.empty(tensor.shape, dtype=dtype)
                    table[name] = torch.nn.Parameter(fake, requires_grad=False) if table is module._parameters else fake
    return network.eval().requires_grad_(False)


def stored_bytes(network: torch.nn.Module) -> int:
    """Bytes of a network's parameters and buffers as stored (each storage once)."""
    seen, total = set(), 0
    for tensor in [*network.parameters(), *network.buffers()]:
        key = id(tensor.untyped_storage())
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total


def largest_layer_bytes(network: torch.nn.Module) -> int:
    """Bytes of the largest layer's own weights as stored (what sequential offload streams)."""
    sizes = [sum(p.numel() * p.element_size() for p in module.parameters(recurse=False)) for module in network.modules()]
    return max(sizes or [0])


# --------------------------------------------------------------------------------------------
# the plan


@dataclass
class PlanRequest:
    """What a run will do, as far as memory is concerned (the `generate` settings by name)."""

    resolution: int = 512
    frames_per_clip: int = 16
    past_frames: int = 16
    steps: int = 20
    cfg: float = 3.5
    dtype: str = "fp32"
    weight_dtype: str = "default"
    offload: str = "none"
    device: str = "cuda"
    vae_batch: int | None = None
    configs: dict | None = None  # network configs (None = the released ones)
    vae_config: dict | None = None  # AutoencoderKL config (None = sd-vae-ft-mse's)
    wav2vec_config: dict | None = None  # Wav2Vec2Config kwargs (None = wav2vec2-base's)
    audio_encoder: bool = True  # whether the wav2vec2 encoder is loaded too (the command line and nodes do)
    memory_fp32: bool = True  # GenerationSettings.memory_fp32 (the motion memory in float32)
    memory_on_host: bool | None = None  # the motion memory waits on the host (None: with an offload mode,
    # as offload.apply_offload keeps it; MemoModels.motion_memory_home)

    def replace(self, **changes) -> "PlanRequest":
        return dataclasses.replace(self, **changes)


@dataclass
class PhaseMemory:
    name: str
    device_bytes: int
    host_bytes: int
    activation_bytes: int = 0


@dataclass
class MemoryPlan:
    request: PlanRequest
    phases: list[PhaseMemory]
    weight_bytes: dict[str, int]  # per network, as stored
    on_cpu: bool
    notes: list[str] = field(default_factory=list)
    motion_memory_bytes: int = 0  # the motion memory after the first clip (in every later phase)

    @property
    def peak_device_bytes(self) -> int:
        return max(p.device_bytes for p in self.phases)

    @property
    def peak_host_bytes(self) -> int:
        return max(p.host_bytes for p in self.phases)

    def to_json(self) -> dict:
        r = self.request
        return {
            "settings": {k: getattr(r, k) for k in ("resolution", "frames_per_clip", "past_frames", "steps", "cfg",
                                                     "dtype", "weight_dtype", "offload", "device", "vae_batch")},
            "peak_device_bytes": self.peak_device_bytes, "peak_host_bytes": self.peak_host_bytes,
            "phases": {p.name: {"device_bytes": p.device_bytes, "host_bytes": p.host_bytes,
                                "activation_bytes": p.activation_bytes} for p in self.phases},
            "weight_bytes": dict(self.weight_bytes), "device_is_host": self.on_cpu, "notes": list(self.notes),
            "motion_memory_bytes": self.motion_memory_bytes,
        }


def _vae_default_config() -> dict:
    from .vae import SD_VAE_ARCHITECTURE

    return json.loads(json.dumps(SD_VAE_ARCHITECTURE))


def _scheduler_copied_by_config():
    """The pipeline's default scheduler, whose per-clip copy is made from its config: a copy of its
    (real) tensors cannot be made under a fake mode, and `set_timesteps` rebuilds them anyway."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    class ConfigCopied(FlowMatchEulerDiscreteScheduler):
        def __deepcopy__(self, memo):
            return FlowMatchEulerDiscreteScheduler.from_config(self.config)

    return ConfigCopied()


def check_request(request: PlanRequest) -> None:
    from .layers import resolve_weight_dtype
    from .loading import resolve_dtype
    from .settings import check_resolution

    check_resolution(request.resolution)
    resolve_dtype(request.dtype)
    resolve_weight_dtype(request.weight_dtype)
    if request.offload not in OFFLOAD_MODES:
        raise ValueError(f"unknown offload mode '{request.offload}'; use one of {', '.join(OFFLOAD_MODES)}")
    torch.device(request.device)


def activation_profile(request: PlanRequest) -> tuple[dict[str, int], dict[str, torch.nn.Module], int, int]:
    """Peak bytes of the tensors alive in each phase (weights not included), the fake networks, the
    bytes of the motion memory (alive in every phase after the first clip) and of its largest slot."""
    from diffusers import AutoencoderKL
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from .layers import resolve_weight_dtype
    from .loading import COMPONENTS, GENERATION_NETWORKS, MemoModels, build_model, resolve_dtype
    from .pipeline import GenerationSettings, MemoPipeline
    from .vae import DiffusersVAE, auto_batch_size

    compute = resolve_dtype(request.dtype)
    configs = request.configs or released_network_configs()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    networks = {}
    for name, (_, cls, _) in COMPONENTS.items():
        if name in configs:
            networks[name] = build_model(cls, configs[name], f"{name} config", device="meta")
    networks["vae"] = build_model(AutoencoderKL, request.vae_config or _vae_default_config(), "VAE config", device="meta")
    if request.audio_encoder:
        with torch.device("meta"):
            networks["wav2vec2"] = Wav2Vec2Model(Wav2Vec2Config(**(request.wav2vec_config or {})))
    for name, network in networks.items():
        dtype = torch.float32 if name == "wav2vec2" else compute  # the audio encoder always runs in float32
        stored = request.weight_dtype if name in GENERATION_NETWORKS else None  # as MemoModels.load stores them
        _fake_network(network, stored_as_loaded(network, dtype, stored), mode)

    models = MemoModels(**{name: networks[name] for name in COMPONENTS if name in networks})
    models.compute_dtype, models.weight_dtype = compute, resolve_weight_dtype(request.weight_dtype)
    batch = request.vae_batch or auto_batch_size(request.device, request.resolution, request.resolution)
    pipeline = MemoPipeline(models, DiffusersVAE(networks["vae"], batch_size=batch), scheduler=_scheduler_copied_by_config())
    settings = GenerationSettings(steps=request.steps, guidance_scale=request.cfg, frames_per_clip=request.frames_per_clip,
                                  past_frames=request.past_frames, init_past_frames=request.past_frames,
                                  memory_fp32=request.memory_fp32)
    if torch.device(request.device).type == "cpu":  # as the command line runs on a CPU
        from .cpu_tuning import apply_cpu_tuning

        apply_cpu_tuning(pipeline)
    tracker = StorageTracker(mode)
    for network in networks.values():
        tracker.exclude([*network.parameters(), *network.buffers()])
    with mode, tracker, torch.no_grad():
        state = clip_phases(pipeline, settings, request.resolution, tracker.phase)
    memory = sum(t.untyped_storage().nbytes() for t in [*state.memory.kv.values(), *state.memory.z.values()])
    return tracker.phase_peaks, networks, memory, state.memory.slot_bytes()


FILE_ITEMSIZE = 4
"""Bytes per weight in the checkpoint files when no checkpoint is given (the release stores float32)."""


def loading_extra_bytes(network: torch.nn.Module, streamed: bool, file_itemsize: int = FILE_ITEMSIZE) -> int:
    """Tensor bytes alive while `network` loads beyond its stored weights, by how `loading` reads
    it: read at once, the whole file in the file's dtype when it is then cast (nothing when the
    dtypes agree: the stored tensors are the ones read); streamed (`loading.stream_weights`), the
    one read buffer, as large as the network's largest tensor in the file's dtype."""
    tensors = [*network.parameters(), *network.buffers()]
    file_bytes = sum(t.numel() for t in tensors) * file_itemsize
    if streamed:
        return max((t.numel() for t in tensors), default=0) * file_itemsize
    if all(t.element_size() == file_itemsize for t in tensors if t.is_floating_point()):
        return 0
    return file_bytes


_PROFILES: dict = {}
"""Activation profiles planned in this process, by everything they depend on (a batch or a test
suite plans the same settings again; fake networks hold no memory)."""


def plan_memory(request: PlanRequest, _profile_cache: dict | None = None) -> MemoryPlan:
    """The memory a run with `request`'s settings needs per phase, on the device and on the host.

    Device per phase: the weights the offload mode keeps there (none: every network; model: the
    largest network running in the phase; sequential: the largest layer's stored weights) plus
    the phase's live tensors. Host: the weights kept there (all of them with an offload mode)
    plus the clip's frames, which the pipeline hands over on the host. With an offload mode the
    motion memory waits on the host too, and the device holds its largest slot (one layer's share)
    instead. Loading holds the stored
    weights plus what reading the largest file adds (`loading_extra_bytes`). On a CPU the device
    is the host: both columns are the same."""
    from .layers import resolve_weight_dtype

    check_request(request)
    key = (request.resolution, request.frames_per_clip, request.past_frames, request.cfg > 1, request.dtype,
           request.weight_dtype, request.device, request.vae_batch, request.audio_encoder, request.memory_fp32,
           json.dumps(request.configs, sort_keys=True), json.dumps(request.vae_config, sort_keys=True),
           json.dumps(request.wav2vec_config, sort_keys=True))
    cache = _profile_cache if _profile_cache is not None else _PROFILES
    if key not in cache:
        if len(_PROFILES) >= 16:
            _PROFILES.clear()
        cache[key] = activation_profile(request)
    activations, networks, memory_bytes, slot_bytes = cache[key]
    weights = {name: stored_bytes(network) for name, network in networks.items()}
    all_weights = sum(weights.values())
    streamed = resolve_weight_dtype(request.weight_dtype) is not None
    extra = max(loading_extra_bytes(network, streamed and name in _generation_networks()) for name, network in networks.items())
    on_cpu = torch.device(request.device).type == "cpu"
    notes = [f"the motion memory takes {gb(memory_bytes)} of every phase after the first clip"]
    phases = []
    if on_cpu:
        if request.offload != "none":
            notes.append(f"offload {request.offload} changes nothing on a CPU: the weights are in host memory anyway")
        phases.append(PhaseMemory("loading", all_weights + extra, all_weights + extra))
        for name in PHASES[1:]:
            total = all_weights + activations[name]
            phases.append(PhaseMemory(name, total, total, activations[name]))
        return MemoryPlan(request, phases, weights, True, notes, memory_bytes)

    frames_on_host = 2 * request.frames_per_clip * 3 * request.resolution ** 2 * 4  # decoded clip + its past frames
    if request.offload == "none":
        largest_read = max(loading_extra_bytes(network, False) or stored_bytes(network) for network in networks.values())
        phases.append(PhaseMemory("loading", all_weights, extra if streamed else largest_read))
        resident = {name: all_weights for name in PHASES[1:]}
        host_weights = 0
    else:
        phases.append(PhaseMemory("loading", 0, all_weights + extra))
        host_weights = all_weights
        if request.offload == "model":
            resident = {name: max(weights[n] for n in PHASE_NETWORKS[name] if n in weights) for name in PHASES[1:]}
        else:
            largest = max(largest_layer_bytes(network) for network in networks.values())
            resident = {name: largest for name in PHASES[1:]}
    on_host = request.offload != "none" if request.memory_on_host is None else request.memory_on_host
    memory_on_host = memory_bytes if on_host else 0
    if on_host:
        notes.append(f"the motion memory waits on the host: the device holds {gb(slot_bytes)} of it at a time, "
                     "one layer's share")
    for name in PHASES[1:]:
        slot = slot_bytes if memory_on_host and name == "denoise" else 0  # only the temporal layers bring a slot
        on_device = activations[name] - memory_on_host + slot
        phases.append(PhaseMemory(name, resident[name] + on_device, host_weights + frames_on_host + memory_on_host,
                                  on_device))
    return MemoryPlan(request, phases, weights, False, notes, memory_bytes)


def _generation_networks() -> tuple[str, ...]:
    from .loading import GENERATION_NETWORKS

    return GENERATION_NETWORKS


# --------------------------------------------------------------------------------------------
# free memory and the check before a run


def free_host_bytes() -> int:
    """Memory the system can give this process now (MemAvailable; psutil where installed)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def free_device_bytes(device: str | torch.device) -> int | None:
    """Free memory of a GPU (torch.cuda.mem_get_info); None where it cannot be asked."""
    device = torch.device(device)
    if device.type == "cpu":
        return free_host_bytes()
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def gb(nbytes: float) -> str:
    """`9.1 GB`, or `14 MB` below 1 GB (decimal units, as GPU and RAM sizes are quoted)."""
    return f"{nbytes / GB:.1f} GB" if nbytes >= 0.995 * GB else f"{nbytes / 1e6:.0f} MB"


SUGGESTED_WEIGHT_DTYPES = ("bf16", "fp8_e4m3fn")
"""Weight dtypes a "does not fit" message may suggest (fp16 and fp8_e5m2 save no more than these)."""


def candidate_changes(request: PlanRequest) -> list[list[tuple[str, object]]]:
    """Changes to try when a run does not fit, smallest first: one setting, then two, then a lower
    resolution with the leanest weights and offload."""
    from .layers import resolve_weight_dtype
    from .loading import resolve_dtype

    compute_size = resolve_dtype(request.dtype).itemsize
    current = resolve_weight_dtype(request.weight_dtype)
    current_size = current.itemsize if current is not None else compute_size
    dtypes = [d for d in SUGGESTED_WEIGHT_DTYPES if resolve_weight_dtype(d).itemsize < current_size]
    offloads = [o for o in OFFLOAD_MODES[1:] if OFFLOAD_MODES.index(o) > OFFLOAD_MODES.index(request.offload)]
    if torch.device(request.device).type == "cpu":
        offloads = []  # on a CPU the weights are in host memory whatever the offload
    single = [[("weight_dtype", d)] for d in dtypes] + [[("offload", o)] for o in offloads]
    pairs = [[("weight_dtype", d), ("offload", o)] for d in dtypes for o in offloads]
    leanest = ([("weight_dtype", dtypes[-1])] if dtypes else []) + ([("offload", offloads[-1])] if offloads else [])
    lower = [r for r in (448, 384, 320, 256) if r < request.resolution]
    return [single, pairs, [[("resolution", r)] for r in lower], [[("resolution", r)] + leanest for r in lower]]


def _describe(change: list[tuple[str, object]]) -> str:
    return " + ".join(f"{name} {value}" for name, value in change)


@dataclass
class FitCheck:
    plan: MemoryPlan
    free_bytes: int | None  # what the plan is compared with (after any budget), None = unknown
    needed_bytes: int
    where: str  # "device" or "host"
    verdict: str  # "fits", "close", "too big" or "unknown"
    suggestion: str = ""

    @property
    def message(self) -> str:
        if self.verdict == "unknown":
            return f"needs ~{gb(self.needed_bytes)} of {self.where} memory (free memory unknown)"
        text = f"needs ~{gb(self.needed_bytes)}, {gb(self.free_bytes)} free"
        if self.verdict == "too big":
            return f"{text}: {self.suggestion}" if self.suggestion else f"{text}; no smaller setting fits"
        return text


def check_fit(request: PlanRequest, budget_bytes: int | None = None, free_device: int | None = -1,
              free_host: int | None = None) -> FitCheck:
    """Compare the plan with the free memory (capped by `budget_bytes`), and where it does not fit
    find the smallest change that does (`candidate_changes`, each re-planned)."""
    cache = None  # the process-wide profiles
    plan = plan_memory(request, cache)
    on_cpu = plan.on_cpu
    free = free_device_bytes(request.device) if free_device == -1 else free_device
    if on_cpu and free_host is not None:
        free = free_host
    if budget_bytes is not None:
        free = budget_bytes if free is None else min(free, budget_bytes)
    where = "host" if on_cpu else "device"
    needed = plan.peak_device_bytes
    if free is None:
        return FitCheck(plan, None, needed, where, "unknown")
    if needed <= CLOSE_FRACTION * free:
        return FitCheck(plan, free, needed, where, "fits")
    if needed <= free:
        return FitCheck(plan, free, needed, where, "close")
    for group in candidate_changes(request):
        fitting = []
        for change in group:
            candidate = request.replace(**dict(change))
            if plan_memory(candidate, cache).peak_device_bytes <= free:
                fitting.append(change)
        if fitting:
            return FitCheck(plan, free, needed, where, "too big", " or ".join(_best(fitting)))
    return FitCheck(plan, free, needed, where, "too big")


def _best(changes: list[list[tuple[str, object]]]) -> list[str]:
    """Of the fitting changes, per setting kind only the mildest (the first tried)."""
    kept, kinds = [], set()
    for change in changes:
        kind = tuple(name for name, _ in change)
        if kind not in kinds:
            kinds.add(kind)
            kept.append(_describe(change))
    return kept


class DoesNotFit(RuntimeError):
    """A run that the memory plan says cannot fit; the message names the smallest change that fits."""


def budget_bytes(budget_gb: float | None) -> int | None:
    """A `--memory-budget` in GB as bytes (None: no budget)."""
    if budget_gb is None:
        return None
    if not budget_gb > 0:
        raise ValueError(f"--memory-budget must be a positive number of GB, got {budget_gb}")
    return int(budget_gb * GB)


def check_request_fits(request: PlanRequest, budget_gb: float | None = None, free_device: int | None = -1,
                       log=None) -> FitCheck:
    """Raise `DoesNotFit` with the one-line reason and the smallest change that fits when the plan
    needs more than the free memory (or the budget); warn when it needs more than `CLOSE_FRACTION`
    of it. `free_device` -1: ask the device (`free_device_bytes`)."""
    import logging

    log = log or logging.getLogger("memo_pipeline")
    fit = check_fit(request, budget_bytes(budget_gb), free_device=free_device)
    if fit.verdict == "too big":
        raise DoesNotFit(f"not enough {fit.where} memory for this run: {fit.message}")
    if fit.verdict == "close":
        log.warning("memory is tight: the run %s (over %d%% of it; allocator overhead may not fit)", fit.message,
                    round(CLOSE_FRACTION * 100))
    elif fit.verdict == "unknown":
        log.info("memory plan: %s", fit.message)
    return fit


def models_request(models, settings, resolution: int, device, offload: str = "model", vae_batch: int | None = None,
                   vae_config: dict | None = None, memory_on_host: bool = False) -> PlanRequest:
    """The plan of a run on already built `MemoModels` (their configs and dtypes), without the audio
    encoder (its features are made before such a run); the motion memory on the device unless
    `memory_on_host`."""
    from .layers import weight_dtype_name
    from .loading import COMPONENTS, DTYPES

    configs = {name: _strip(dict(getattr(models, name).config)) for name in COMPONENTS if getattr(models, name, None) is not None}
    dtype = next(name for name, value in DTYPES.items() if value == models.dtype)
    return PlanRequest(resolution=resolution, frames_per_clip=settings.frames_per_clip, past_frames=settings.past_frames,
                       steps=settings.steps, cfg=settings.guidance_scale, dtype=dtype,
                       weight_dtype=weight_dtype_name(getattr(models, "weight_dtype", None)), offload=offload,
                       device=str(device), vae_batch=vae_batch, configs=configs, vae_config=vae_config,
                       audio_encoder=False, memory_on_host=memory_on_host)


def check_managed_run(request: PlanRequest, free_device: int | None, log=None) -> FitCheck:
    """The check for a host whose model manager loads each network before it runs and can keep part
    of a network's weights off the device (ComfyUI): `request` (offload "model") is checked; where it
    does not fit, the same with the motion memory waiting on the host (the caller then keeps it
    there: `fit.plan.request.memory_on_host`), then also streaming the weights (offload
    "sequential"); each fallback warns (slower). Where none fits, `DoesNotFit` names the smallest
    change."""
    import logging

    log = log or logging.getLogger("memo_pipeline")
    try:
        return check_request_fits(request, free_device=free_device, log=log)
    except DoesNotFit as too_big:
        needed = gb(plan_memory(request).peak_device_bytes)
        for fallback, why in ((request.replace(memory_on_host=True), "the motion memory will wait in RAM and each "
                               "temporal layer bring its share to the device per step"),
                              (request.replace(memory_on_host=True, offload="sequential"), "the motion memory will "
                               "wait in RAM and part of the weights stay off the device, streamed in per layer")):
            if fallback == request:
                continue
            try:
                fit = check_request_fits(fallback, free_device=free_device, log=log)
            except DoesNotFit as err:
                too_big = err
                continue
            log.warning("memory: the run needs ~%s with one whole network and the motion memory on the device, %s "
                        "free: %s (slower)", needed, gb(fit.free_bytes), why)
            return fit
        raise too_big
