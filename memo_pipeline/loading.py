"""Load and save MEMO checkpoints in the released folder layout, strictly.

    <root>/reference_net/                   config.json + diffusion_pytorch_model.safetensors
    <root>/diffusion_net/                   (or a sharded *.safetensors.index.json)
    <root>/image_proj/
    <root>/audio_proj/
    <root>/misc/audio_emotion_classifier/   (model.safetensors also accepted)

Each sub-model is built from its own config.json and must match its weights key for key and
shape for shape; anything else is an error naming the file and the first offending keys.
Only safetensors are read: pickled `.bin`/`.pt` weights are refused rather than unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .layers import (CastingLayers, network_weight_dtype, resolve_weight_dtype, storage_dtypes, to_storage_dtype,
                     use_layers)
from .models.diffusion_net import DiffusionNet
from .models.emotion_classifier import AudioEmotionClassifier
from .models.projections import AudioProjection, ImageProjection
from .models.reference_net import ReferenceNet

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# the networks a generation runs (the emotion classifier only labels audio): what a saved state depends on
GENERATION_NETWORKS = ("reference_net", "diffusion_net", "image_proj", "audio_proj")
# sub-folder, our class, the class name written into config.json (the released one)

COMPONENTS = {
    "reference_net": ("reference_net", ReferenceNet, "UNet2DConditionModel"),
    "diffusion_net": ("diffusion_net", DiffusionNet, "UNet3DConditionModel"),
    "image_proj": ("image_proj", ImageProjection, "ImageProjModel"),
    "audio_proj": ("audio_proj", AudioProjection, "AudioProjModel"),
    "emotion_classifier": ("misc/audio_emotion_classifier", AudioEmotionClassifier, "AudioEmotionClassifierModel"),
}

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be loaded as a MEMO model."""


SAFE_PICKLE_TORCH = "2.10"
"""Oldest torch whose `torch.load(weights_only=True)` is treated as a safety boundary: public
advisories showed it bypassable below 2.6 and fixed another hole in 2.10. On older torch the
pickled formats (.pt/.bin) are refused; safetensors files load on any supported torch."""


def require_safe_torch_load(path: str | os.PathLike) -> None:
    """Refuse to unpickle `path` on a torch whose `weights_only` loader is not trustworthy."""
    from torch.torch_version import TorchVersion

    if TorchVersion(str(torch.__version__).split("+")[0]) < SAFE_PICKLE_TORCH:
        raise CheckpointError(
            f"{path}: pickled weights (.pt/.bin) are only opened with torch >= {SAFE_PICKLE_TORCH}, where "
            f"torch.load(weights_only=True) is safe; this is torch {torch.__version__}. Upgrade torch or convert the "
            "file to .safetensors."
        )


def resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; use one of fp32, fp16, bf16")
    return DTYPES[str(dtype).lower()]


def move(model: torch.nn.Module, device=None, dtype=None) -> torch.nn.Module:
    """Plain `nn.Module.to` (diffusers' override warns about fp32-only modules these models don't have)."""
    return torch.nn.Module.to(model, device=device, dtype=resolve_dtype(dtype))


def read_json(path: str | os.PathLike) -> object:
    """A JSON file, with every way it can be unreadable (a folder in its place, bad UTF-8, invalid or
    absurdly nested JSON) raised as one CheckpointError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder where a JSON file should be; remove or rename it")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    except RecursionError:
        raise CheckpointError(f"{path} is not a usable JSON file: it is nested too deeply") from None


def read_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{path} is missing: a MEMO model folder needs its config.json next to the weights")
    config = read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    check_config_limits(config, os.fspath(path))
    return config


MAX_REPEATS = 48
"""Most layers / blocks a config may ask for per count (wav2vec2 XLS-R has 48 layers, the SD nets 2 per
block). Building a network on the meta device still costs time per module: a config asking for
thousands would keep `models check` and the loaders busy for minutes before any weight is read."""
MAX_LIST_ENTRIES = 16
"""Most entries of a list in a config (the SD nets have 4 levels, wav2vec2 7 conv layers)."""
MAX_CONFIG_INT = 1 << 20
"""Largest integer a config may hold (widths and table lengths are far below it)."""
_REPEAT_KEY = re.compile(r"(^|_)(layers|depth|blocks)$|layers_per_block$")


def check_config_limits(config, source: str) -> None:
    """Refuse a config that asks for more repeats, levels or width than any real model has, before
    anything is built from it (one rule for the MEMO nets, the VAE and wav2vec2)."""

    def visit(value, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                visit(item, str(name))
        elif isinstance(value, (list, tuple)):
            if len(value) > MAX_LIST_ENTRIES:
                raise CheckpointError(f"{source}: '{key}' has {len(value)} entries; at most {MAX_LIST_ENTRIES} are accepted")
            for item in value:
                visit(item, key)
        elif isinstance(value, int) and not isinstance(value, bool):
            if _REPEAT_KEY.search(key) and value > MAX_REPEATS:
                raise CheckpointError(f"{source}: '{key}' asks for {value} layers; at most {MAX_REPEATS} are accepted "
                                      "(no released model has more)")
            if abs(value) > MAX_CONFIG_INT:
                raise CheckpointError(f"{source}: '{key}' is {value}, far beyond any real model's size")

    visit(config, "config")


def constructor_kwargs(cls, config: dict, source: str) -> dict:
    """Config keys -> constructor kwargs. Keys starting with '_' are metadata. Keys the model does
    not take are ignored with a warning, as the official `from_pretrained` does (so they cannot
    have influenced the released model's numbers either)."""
    params = inspect.signature(cls.__init__).parameters
    kwargs = {key: value for key, value in config.items() if not key.startswith("_") and key in params}
    unknown = sorted(key for key in config if not key.startswith("_") and key not in params)
    if unknown:
        logger.warning("%s: ignoring config keys %s does not take: %s", source, cls.__name__, ", ".join(unknown))
    return kwargs


def build_model(cls, config: dict, source: str = "config", device: str | torch.device | None = None) -> torch.nn.Module:
    check_config_limits(config, source)
    try:
        with torch.device(device or "cpu"):
            return cls(**constructor_kwargs(cls, config, source))
    except CheckpointError:
        raise
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: cannot build {cls.__name__}: {err}") from err


def shard_path(folder: Path, shard, index: Path) -> Path:
    """The file a safetensors index names, refused unless it is a plain file name inside `folder`."""
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(f"{index}: shard names must be file names, got {shard!r}")
    path = (folder / shard).resolve()
    if os.path.isabs(shard) or not path.is_relative_to(folder.resolve()):
        raise CheckpointError(f"{index} names the shard '{shard}', which lies outside the model folder {folder}; "
                              "refused (an index may only name files next to it)")
    return folder / shard


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files holding a model folder's weights (one file, or the shards its index
    names), as the loader reads them; pickled weights are refused here."""
    folder = Path(folder)
    for name in WEIGHT_NAMES:
        if (folder / name).is_dir():
            raise CheckpointError(f"{folder / name} is a folder where the weights file should be; remove or rename it")
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(read_json(index)["weight_map"].values()), key=str)
            except (KeyError, TypeError, AttributeError) as err:
                raise CheckpointError(f"{index} is not a valid safetensors index: {err}") from err
            return [shard_path(folder, shard, index) for shard in shards]
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickled weights ({', '.join(pickles)}); they are not loaded because unpickling can "
            "run arbitrary code. Use the safetensors release or convert the file to safetensors first."
        )
    raise CheckpointError(f"{folder} has no weights: expected one of {', '.join(WEIGHT_NAMES)}")


def read_weights(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], str]:
    folder = Path(folder)
    tensors, names = {}, []
    for path in weight_files(folder):
        if not path.is_file():
            raise CheckpointError(f"{path} is listed in the safetensors index but missing")
        try:
            tensors.update(load_file(os.fspath(path), device=str(device)))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {err}") from err
        names.append(os.fspath(path))
    return tensors, ", ".join(names)


def weights_fingerprint(files: list[Path], samples: int = 16, chunk: int = 4096) -> str:
    """Short hash of safetensors files that tells two checkpoints with equal configs apart, cheaply:
    each file's size and header (names, dtypes, shapes, data offsets) and `samples` evenly spaced
    chunks of its tensor bytes. Saved generation states record it (`state.weights_fingerprint`)."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = f.read(8)
            length = int.from_bytes(header, "little") if len(header) == 8 else 0
            digest.update(size.to_bytes(8, "little") + header + f.read(min(length, size)))
            start = 8 + length
            span = max(0, size - start - chunk)
            for k in range(samples):
                f.seek(start + span * k // max(1, samples - 1))
                digest.update(f.read(chunk))
    return digest.hexdigest()[:16]


def shape_problems(expected: dict, found: dict, limit: int = 5, ignore=frozenset()) -> list[str]:
    """`["N missing keys: a, b", "N unexpected keys: ...", "N shape mismatches: k (3, 4) (model wants ...)"]`
    comparing two `{key: shape}` maps; empty when they agree."""
    exp = {k: tuple(v) for k, v in expected.items()}
    got = {k: tuple(v) for k, v in found.items()}
    missing = sorted(set(exp) - set(got) - set(ignore))
    unexpected = sorted(set(got) - set(exp) - set(ignore))
    wrong = [f"{k} {got[k]} (model wants {exp[k]})" for k in sorted(set(exp) & set(got)) if exp[k] != got[k]]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
        if keys:
            more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:limit])}{more}")
    return problems


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str, limit: int = 5) -> None:
    """Raise if keys or shapes differ, naming the source and the first offending keys."""
    problems = shape_problems({k: v.shape for k, v in model.state_dict().items()},
                              {k: v.shape for k, v in tensors.items()}, limit)
    if problems:
        raise CheckpointError(f"{source} does not match {type(model).__name__}: " + "; ".join(problems))


def load_weights_strict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    check_state_dict(model, tensors, source)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model


def load_component(folder: str | os.PathLike, cls, dtype=None, device: str | torch.device = "cpu",
                   weight_dtype=None, layers=None) -> torch.nn.Module:
    """Build `cls` from `folder/config.json` (on the meta device, so nothing is allocated twice),
    load its safetensors strictly, then cast/move.

    `layers`: a layer namespace for `layers.use_layers` (e.g. comfy.ops); `weight_dtype` (a
    `WEIGHT_DTYPES` name or dtype) stores the weights that way (`layers.storage_dtypes`), with
    `CastingLayers` unless `layers` is given, and `dtype` (fp32 when None) as the compute dtype.
    A `weight_dtype` reads the file tensor by tensor straight into its storage dtype and device;
    `layers` alone keeps the default load (the same tensors, so the same output bit for bit)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    config = read_config(folder)
    model = build_model(cls, config, os.fspath(folder / "config.json"), device="meta")
    weight_dtype = resolve_weight_dtype(weight_dtype)
    if weight_dtype is None:
        tensors, source = read_weights(folder)
        load_weights_strict(model, tensors, source)
        move(model, device, dtype)
        if layers is not None:
            # the default load's very tensors (their addresses steer the CPU kernels' rounding): bit-identical output
            use_layers(model, layers)
        return model.eval().requires_grad_(False)
    use_layers(model, layers if layers is not None else CastingLayers)
    compute = resolve_dtype(dtype) or torch.float32
    tensors = stream_weights(folder, model, storage_dtypes(model, weight_dtype, compute), device)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False)


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
                       "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The tensor entries of a safetensors file's header and the offset its data starts at, checked
    as `model_files.read_safetensors_entries` checks downloads, in dtypes torch has. Read with plain
    reads: `safe_open(framework="pt")` would place the whole file in a torch storage first."""
    from .model_files import FileProblem, read_safetensors_entries

    bad = f"{path} is not a readable safetensors file (corrupt or truncated?)"
    try:
        entries, _metadata, data_start = read_safetensors_entries(path)
    except (FileProblem, OSError) as err:
        raise CheckpointError(f"{bad}: {err}") from err
    unknown = sorted({entry["dtype"] for entry in entries.values()} - set(_SAFETENSORS_DTYPES))
    if unknown:
        raise CheckpointError(f"{bad}: tensor dtypes {', '.join(unknown)} cannot be loaded here")
    return entries, data_start


def _read_tensor(f, path: Path, key: str, entry: dict, data_start: int, scratch: torch.Tensor) -> torch.Tensor:
    """One tensor of an open safetensors file, read with plain reads into the front of `scratch`
    (a uint8 buffer at least as long as the file's largest tensor): a view that the next read
    overwrites."""
    dtype = _SAFETENSORS_DTYPES[entry["dtype"]]  # known: checked by `_safetensors_header`
    begin, end = entry["data_offsets"]
    buffer = scratch[:end - begin]
    f.seek(data_start + begin)
    if end > begin and f.readinto(memoryview(buffer.numpy())) != end - begin:
        raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {key} is cut short")
    return buffer.view(dtype).reshape(entry["shape"])


def stream_weights(folder: str | os.PathLike, model: torch.nn.Module, dtypes: dict[str, torch.dtype],
                   device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A model folder's tensors, each read, cast to `dtypes[name]` (its own dtype where absent) and
    moved to `device` before the next is read: memory holds the stored result plus one tensor in
    the file's dtype, never a whole copy in the file's dtype. Keys and shapes are checked against
    `model` from the file headers first, before any tensor is read.

    Tensors are read with plain file reads, not through a memory mapping: every page of a mapping
    a tensor was read from would count as the process's memory until the mapping closes (the
    page cache behind plain reads does not). Every tensor is read into one buffer the size of the
    file's largest tensor, so loading peaks at the stored size plus that buffer."""
    folder = Path(folder)
    headers: dict[Path, tuple[dict, int]] = {}
    shapes = {}
    for path in weight_files(folder):
        if not path.is_file():
            raise CheckpointError(f"{path} is listed in the safetensors index but missing")
        headers[path] = _safetensors_header(path)
        shapes.update((key, tuple(entry["shape"])) for key, entry in headers[path][0].items())
    source = ", ".join(os.fspath(p) for p in headers)
    problems = shape_problems({k: v.shape for k, v in model.state_dict().items()}, shapes)
    if problems:
        raise CheckpointError(f"{source} does not match {type(model).__name__}: " + "; ".join(problems))
    tensors = {}
    for path, (header, data_start) in headers.items():
        largest = max((end - begin for begin, end in (e["data_offsets"] for e in header.values())), default=0)
        # one buffer for every read: per-tensor buffers, freed between stored results, would leave
        # the heap fragmented (its peak well above the stored size)
        scratch = torch.empty(largest, dtype=torch.uint8)
        try:
            with open(path, "rb") as f:
                for key, entry in header.items():
                    read = _read_tensor(f, path, key, entry, data_start, scratch)
                    stored = to_storage_dtype(read, dtypes.get(key, read.dtype), in_place=True).to(device)
                    if stored.data_ptr() == read.data_ptr() or stored.untyped_storage().data_ptr() == scratch.data_ptr():
                        stored = stored.clone()  # still the scratch buffer, which the next read overwrites
                    tensors[key] = stored
        except OSError as err:
            raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {err}") from err
        del scratch
    return tensors


def save_component(model: torch.nn.Module, folder: str | os.PathLike, class_name: str) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": class_name, **{k: v for k, v in dict(model.config).items() if not k.startswith("_")}}
    config = json.loads(json.dumps(config, default=list))
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              os.fspath(folder / WEIGHT_NAMES[0]), metadata={"format": "pt"})


@dataclass
class MemoModels:
    """The MEMO networks of one checkpoint. `emotion_classifier` is optional (manual emotions)."""

    reference_net: ReferenceNet
    diffusion_net: DiffusionNet
    image_proj: ImageProjection
    audio_proj: AudioProjection
    emotion_classifier: AudioEmotionClassifier | None = None

    @classmethod
    def load(cls, root: str | os.PathLike, dtype="fp32", device="cpu", emotion_classifier: bool = True,
             weight_dtype=None, layers=None) -> "MemoModels":
        """Load every network of the checkpoint at `root`, computing in `dtype` on `device`.

        `weight_dtype` ("default", "bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2") stores the layer
        weights in that dtype and casts them per forward; `layers` is the layer namespace the
        networks use (`layers.use_layers`; ComfyUI's node layer passes comfy.ops). See `load_component`."""
        root = Path(root)
        if not root.is_dir():
            raise CheckpointError(f"MEMO checkpoint folder {root} does not exist")
        missing = [sub for name, (sub, _, _) in COMPONENTS.items()
                   if name != "emotion_classifier" and not (root / sub).is_dir()]
        if missing:
            raise CheckpointError(
                f"{root} is not a MEMO checkpoint folder: missing {', '.join(missing)} "
                "(expected reference_net/, diffusion_net/, image_proj/, audio_proj/, misc/audio_emotion_classifier/)"
            )
        models = {}
        for name, (sub, model_cls, _) in COMPONENTS.items():
            if name == "emotion_classifier" and (not emotion_classifier or not (root / sub).is_dir()):
                models[name] = None
                continue
            # the emotion classifier and the image projection keep their dtype (`layers.KEPT_NETWORKS`)
            models[name] = load_component(root / sub, model_cls, dtype, device, network_weight_dtype(name, weight_dtype), layers)
        loaded = cls(**models)
        loaded.weight_dtype = resolve_weight_dtype(weight_dtype)
        loaded.compute_dtype = resolve_dtype(dtype) or (torch.float32 if loaded.weight_dtype else loaded.diffusion_net.dtype)
        loaded.weights_fingerprint = weights_fingerprint(
            [f for name in GENERATION_NETWORKS
             for f in weight_files(root / COMPONENTS[name][0])])
        return loaded

    def save(self, root: str | os.PathLike) -> None:
        for name, (sub, _, class_name) in COMPONENTS.items():
            model = getattr(self, name)
            if model is not None:
                save_component(model, Path(root) / sub, class_name)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def to(self, device=None, dtype=None) -> "MemoModels":
        """Move to `device` and make `dtype` the compute dtype; weights stored in a `weight_dtype`
        keep it (only the parameters `layers.storage_dtypes` keeps in the compute dtype change)."""
        dtype = resolve_dtype(dtype)
        for name, module in self.modules().items():
            stored = network_weight_dtype(name, self.weight_dtype)
            if stored is None or dtype is None:
                move(module, device, dtype)
                continue
            targets = storage_dtypes(module, stored, dtype)
            move(module, device)
            for key, tensor in list(module.named_parameters()) + list(module.named_buffers()):
                if key in targets and tensor.dtype != targets[key]:
                    tensor.data = to_storage_dtype(tensor.data, targets[key])
        if dtype is not None:
            self.compute_dtype = dtype
        return self

    # class attributes, not dataclass fields:
    _run_device = None  # set by `load_on_demand`
    execution_device = None  # where the networks run while offload keeps their weights on the host (offload.py)
    motion_memory_home = None  # where the motion memory waits between layers (offload.py: the host; None: the device)
    weights_fingerprint = None  # str, set by `load`
    compute_dtype = None  # the dtype the networks compute in, set by `load` (None: the diffusion net's)
    weight_dtype = None  # the dtype layer weights are stored in, set by `load` (None: the compute dtype)

    @property
    def audio_feature_shape(self) -> tuple[int, int]:
        """(wav2vec2 layers, channels) per audio window that `audio_proj` takes (12 x 768 for MEMO)."""
        config = self.audio_proj.config
        return int(config.blocks), int(config.channels)

    @property
    def face_embedding_width(self) -> int:
        """Length of the identity embedding `image_proj` takes (512 for ArcFace)."""
        return int(self.image_proj.config.clip_embeddings_dim)

    @property
    def max_frames_per_clip(self) -> int | None:
        """Frames one clip may have: the length of the temporal position table (None = unlimited)."""
        kwargs = dict(getattr(self.diffusion_net.config, "motion_module_kwargs", None) or {})
        table = kwargs.get("temporal_position_encoding_max_len")
        return int(table) if table and kwargs.get("temporal_position_encoding", True) else None

    @property
    def supports_guidance(self) -> bool:
        """Whether the emotion table has the unconditional row classifier-free guidance needs."""
        return bool(self.diffusion_net.config.emo_drop_rate > 0)

    @property
    def device(self) -> torch.device:
        """Where the networks run: the `load_on_demand` device inside that block, else the offload
        execution device, else the diffusion net's."""
        for device in (self._run_device, self.execution_device):
            if device is not None:
                return device
        return self.diffusion_net.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (weights may be stored in another, see `weight_dtype`)."""
        return self.compute_dtype if self.compute_dtype is not None else self.diffusion_net.dtype

    @contextlib.contextmanager
    def load_on_demand(self, device, load: Callable[[torch.nn.Module], None]):
        """Within the block, call `load(network)` right before each network's forward runs, and report
        `device` as `self.device` so the pipeline prepares its inputs there.

        For model managers that keep only the running network on the GPU (ComfyUI's): `load` brings
        that one network to `device`, offloading idle ones if memory is short. Implemented with
        forward pre-hooks that are removed when the block ends, so the networks keep no state.
        """
        hooks = [network.register_forward_pre_hook(lambda network, _args: load(network))
                 for network in self.modules().values()]
        previous, self._run_device = self._run_device, torch.device(device)
        try:
            yield self
        finally:
            for hook in hooks:
                hook.remove()
            self._run_device = previous
