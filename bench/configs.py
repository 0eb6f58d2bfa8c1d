"""Benchmark configurations shared by the bench scripts, the revision comparison and the GPU check.

Only the public API that every revision since the first release has (`build_model`, `MemoModels`,
`DiffusersVAE`, `GenerationSettings`, `WindowedAudio`, `reference_pixels`, `MemoPipeline.generate`)
is used, so `compare_revisions.py` can drive an older checkout with exactly the same code.

- tiny:  `memo_pipeline.tiny` widths (seconds on a CPU), for checking that a script runs;
- small: three UNet levels of width 64/128/128 and a small VAE (what `bench_pipeline.py` measures);
- mid:   the released network configs (`memo_pipeline/released_configs/*/config.json`), an sd-vae-ft-mse-shaped
         AutoencoderKL, 768-wide audio features of 12 wav2vec2 layers and a 512-wide face embedding.
Weights and inputs are random and seeded: speed and memory do not depend on their values.

CPU runs are tuned as the command line tunes them: `build_case` applies this checkout's
`memo_pipeline.cpu_tuning` to the networks (`cpu_tuning=False` leaves them plain) and every script
wraps its run in `owned_allocator` (`tuned_allocator`). A revision from before that module had the
same tuning built into its model classes and `MemoPipeline.generate`, so there both do nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch


SMALL_WIDTHS = [64, 128, 128]
SMALL_VAE_WIDTHS = [32, 64, 128, 128]

SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    norm_num_groups=32, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    sample_size=256, scaling_factor=0.18215,
)
"""The architecture of stabilityai/sd-vae-ft-mse (the VAE MEMO is used with)."""


@dataclass
class BenchCase:
    """A pipeline and the inputs of one generation."""

    pipeline: object
    pixels: torch.Tensor
    face: torch.Tensor | None
    audio: object
    emotion: torch.Tensor
    frames: int


RELEASED_CONFIGS = Path(__file__).resolve().parents[1] / "memo_pipeline" / "released_configs"
"""The released networks' config.json files, where the library keeps them for `plan` (read as files,
not imported: an older checkout driven by compare_revisions.py has no such module)."""


def _spec_config(name: str) -> dict:
    config = json.loads((RELEASED_CONFIGS / name / "config.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _networks(size: str) -> tuple[dict, dict]:
    """Configs of the five MEMO networks and of the VAE for `size`."""
    from memo_pipeline.tiny import TINY_CONFIGS, TINY_VAE

    if size == "mid":
        configs = {name: _spec_config(name) for name in ("reference_net", "diffusion_net", "image_proj", "audio_proj")}
        configs["emotion_classifier"] = dict(TINY_CONFIGS["emotion_classifier"])
        return configs, dict(SD_VAE)
    configs = {name: dict(config) for name, config in TINY_CONFIGS.items()}
    if size == "tiny":
        return configs, dict(TINY_VAE)
    if size != "small":
        raise ValueError(f"unknown benchmark size '{size}' (tiny, small or mid)")
    kinds = ["CrossAttnDown", "CrossAttnDown", "Down"]
    for name, suffix in (("reference_net", "2D"), ("diffusion_net", "3D")):
        configs[name].update(block_out_channels=SMALL_WIDTHS, norm_num_groups=32,
                             down_block_types=[k + "Block" + suffix for k in kinds],
                             up_block_types=["UpBlock" + suffix, "CrossAttnUpBlock" + suffix, "CrossAttnUpBlock" + suffix])
    return configs, dict(TINY_VAE, block_out_channels=SMALL_VAE_WIDTHS, norm_num_groups=32)


@contextmanager
def parameters_on_meta():
    """Create parameters on the meta device (no memory, no default init); buffers stay real."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def random_model(cls, config: dict, seed: int, scale: float = 1.0) -> torch.nn.Module:
    """`cls(**config)` with seeded random weights, built without running the default init (which
    takes minutes for the full-size networks): matrices N(0, scale^2/fan_in), norm scales
    1 + 0.1 N, biases 0.1 N, as `memo_pipeline.tiny.randomize` draws them."""
    from memo_pipeline.loading import build_model

    with parameters_on_meta():
        model = build_model(cls, config, cls.__name__) if hasattr(cls, "config_name") else cls(**config)
    modules = dict(model.named_modules())
    for key, value in _random_values(model, seed, scale):
        owner, _, name = key.rpartition(".")
        modules[owner]._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
    return model.eval()


def _cpu_tuning_module():
    """`memo_pipeline.cpu_tuning` of the revision under test, or None for one without it."""
    try:
        from memo_pipeline import cpu_tuning
    except ImportError:
        return None
    return cpu_tuning


def tune_for_device(*networks, device: str = "cpu") -> None:
    """Switch the CPU tuning on for a CPU run, as the command line does (nothing on GPUs)."""
    tuning = _cpu_tuning_module()
    if tuning is not None and torch.device(device).type == "cpu":
        tuning.apply_cpu_tuning(*networks)


@contextmanager
def owned_allocator(device: str = "cpu"):
    """The heap setting of a CPU run for the whole block, as the command line enters it (the
    benchmark owns its process); older revisions set it inside `generate` themselves."""
    tuning = _cpu_tuning_module()
    if tuning is None or torch.device(device).type != "cpu":
        yield
        return
    with tuning.tuned_allocator():
        yield


def _random_values(model: torch.nn.Module, seed: int, scale: float):
    """(state-dict name, value) of `model`'s parameters in `random_model`'s order and with its values,
    one at a time (parameters on the meta device: only their shapes are read)."""
    generator = torch.Generator().manual_seed(seed)
    for prefix, module in model.named_modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            value = torch.empty(param.shape)
            if param.ndim >= 2:
                value.normal_(0.0, scale / math.sqrt(param.numel() / param.shape[0]), generator=generator)
            elif name.endswith("weight"):
                value.normal_(1.0, 0.1, generator=generator)
            else:
                value.normal_(0.0, 0.1, generator=generator)
            yield (f"{prefix}.{name}" if prefix else name), value


def write_random_component(cls, config: dict, folder: Path, seed: int, class_name: str, scale: float = 1.0) -> None:
    """`random_model(cls, config, seed, scale)` written as a model folder (config.json + safetensors)
    one tensor at a time: the header is laid out from the shapes first, then each tensor is drawn
    and written at its offset, so at most one tensor is in memory."""
    from memo_pipeline.loading import WEIGHT_NAMES, build_model

    with parameters_on_meta():
        model = build_model(cls, config, cls.__name__) if hasattr(cls, "config_name") else cls(**config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key in sorted(shapes):
        size = math.prod(shapes[key]) * 4
        header[key] = {"dtype": "F32", "shape": list(shapes[key]), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    folder.mkdir(parents=True, exist_ok=True)
    saved = {"_class_name": class_name, **{k: v for k, v in dict(model.config).items() if not k.startswith("_")}}
    (folder / "config.json").write_text(json.dumps(json.loads(json.dumps(saved, default=list)), indent=2, sort_keys=True))
    with open(folder / WEIGHT_NAMES[0], "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        start = f.tell()
        f.truncate(start + offset)
        written = set()
        for key, value in _random_values(model, seed, scale):
            f.seek(start + header[key]["data_offsets"][0])
            f.write(value.contiguous().numpy().tobytes())
            written.add(key)
        for key, value in model.state_dict().items():  # buffers (real: small position tables)
            if key not in written:
                f.seek(start + header[key]["data_offsets"][0])
                f.write(value.float().contiguous().numpy().tobytes())
                written.add(key)


WEIGHT_CACHE = Path(tempfile.gettempdir()) / "memo-bench-weights"
"""Where `build_case` keeps the random checkpoints it loads in a weight dtype (written once per size and seed)."""


def cached_checkpoint(size: str, seed: int) -> Path:
    """A MEMO checkpoint folder with `build_case`'s random weights of `size` (the values its
    in-memory path draws), written in a separate process the first time: the writing never
    adds to the memory of the process that loads it."""
    configs, _ = _networks(size)
    digest = hashlib.sha256(json.dumps(configs, sort_keys=True, default=str).encode()).hexdigest()[:12]
    root = WEIGHT_CACHE / f"{size}-seed{seed}-{digest}"
    if not root.is_dir():
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_write_checkpoint", size, str(seed),
                               str(root)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"writing the random {size} checkpoint to {root} failed:\n{done.stderr[-3000:]}")
    return root


def _write_checkpoint(size: str, seed: int, root: Path) -> None:
    """Written under a name of this process, then renamed: a reader never sees half a checkpoint."""
    import os
    import shutil

    from memo_pipeline.loading import COMPONENTS

    configs, _ = _networks(size)
    partial = root.with_name(f"{root.name}.{os.getpid()}.partial")
    for i, (name, (sub, cls, class_name)) in enumerate(COMPONENTS.items()):
        write_random_component(cls, configs[name], partial / sub, seed + i, class_name)
    try:
        partial.rename(root)
    except OSError:  # another process finished the same checkpoint first
        shutil.rmtree(partial, ignore_errors=True)


def build_case(size: str, resolution: int, clips: int, frames_per_clip: int = 16, vae_batch: int | None = None,
               dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0,
               cpu_tuning: bool = True, weight_dtype: str | None = None) -> BenchCase:
    """Random-weight models of `size` and random inputs for `clips` clips at `resolution` px
    (CPU-tuned where `device` is the CPU, unless `cpu_tuning` is False).

    `weight_dtype` (a `memo_pipeline.layers.WEIGHT_DTYPES` name, "default" included) loads the same
    random weights through the real loading path, `MemoModels.load(weight_dtype=...)`, from a
    checkpoint written once under the temp folder (`cached_checkpoint`): each tensor goes straight
    into its storage dtype and no fp32 copy of a network exists in this process. None builds them
    in memory (every revision has that path, see `compare_revisions.py`)."""
    from diffusers import AutoencoderKL

    from memo_pipeline.loading import COMPONENTS, MemoModels
    from memo_pipeline.pipeline import MemoPipeline, WindowedAudio, reference_pixels
    from memo_pipeline.vae import DiffusersVAE

    configs, vae_config = _networks(size)
    if weight_dtype is None:
        models = {}
        for i, (name, (_, cls, _)) in enumerate(COMPONENTS.items()):
            models[name] = torch.nn.Module.to(random_model(cls, configs[name], seed + i), device=device, dtype=dtype)
        memo_models = MemoModels(**models)
    else:
        memo_models = MemoModels.load(cached_checkpoint(size, seed), dtype=dtype, device=device, weight_dtype=weight_dtype)
    vae = torch.nn.Module.to(random_model(AutoencoderKL, vae_config, seed + 9, 0.5), device=device, dtype=dtype)
    # each revision's own default batch size unless one is asked for
    pipeline = MemoPipeline(memo_models, DiffusersVAE(vae) if vae_batch is None else DiffusersVAE(vae, batch_size=vae_batch))
    if cpu_tuning:
        tune_for_device(pipeline, device=device)

    g = torch.Generator().manual_seed(seed + 100)
    projection = configs["audio_proj"]
    frames = clips * frames_per_clip
    features = torch.randn(frames, projection["seq_len"], projection["blocks"], projection["channels"], generator=g)
    face = torch.randn(1, configs["image_proj"]["clip_embeddings_dim"], generator=g)
    emotion = torch.randint(0, 9, (frames,), generator=g)
    pixels = reference_pixels(torch.rand(resolution, resolution, 3, generator=g))
    return BenchCase(pipeline, pixels, face, WindowedAudio(features), emotion, frames)


def settings_for(steps: int, frames_per_clip: int = 16, past_frames: int = 16, guidance_scale: float = 3.5, **extra):
    """`GenerationSettings` with the options this checkout knows (older revisions lack some)."""
    import dataclasses

    from memo_pipeline.pipeline import GenerationSettings

    known = {f.name for f in dataclasses.fields(GenerationSettings)}
    options = dict(steps=steps, guidance_scale=guidance_scale, frames_per_clip=frames_per_clip,
                   past_frames=past_frames, init_past_frames=past_frames, seed=42)
    options.update({k: v for k, v in extra.items() if k in known})
    return GenerationSettings(**options)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "_write_checkpoint":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    _write_checkpoint(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
