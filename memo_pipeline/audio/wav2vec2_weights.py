"""Build a transformers ``Wav2Vec2Model`` from the checkpoint layouts people actually have.

Accepted:

* a Hugging Face folder (``facebook/wav2vec2-base-960h`` style): ``config.json`` plus
  ``model.safetensors``, a sharded ``model.safetensors.index.json``, or
  ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``);
  ``preprocessor_config.json`` is read for ``do_normalize`` when present;
* a single ``.safetensors`` file as kept in ComfyUI's ``models/audio_encoders``. Those
  files carry the Hugging Face key names, with or without the ``wav2vec2.`` prefix of
  the CTC / pre-training checkpoints (ComfyUI strips it the same way), often in fp16.
  The config is inferred from tensor shapes; what shapes cannot tell follows the
  published wav2vec2 checkpoints: 64-dim attention heads, conv strides 5 / 2 / 2 for
  kernels 10 / 3 / 2, GELU activations, and pre-norm ("stable") encoder layers exactly
  when the conv front-end uses per-layer LayerNorm (large-lv60 / XLSR) rather than a
  single GroupNorm (base, large).

Loading is strict: any missing or unexpected tensor, or a wrong shape, raises
:class:`Wav2Vec2WeightsError` naming the file. Heads that MEMO never uses (CTC
``lm_head``, pre-training quantizer / projections, classifier heads) are dropped,
and ``masked_spec_embed`` (only used for SpecAugment during training) may be absent.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Wav2Vec2Config, Wav2Vec2Model

logger = logging.getLogger(__name__)

_ANCHOR = "feature_extractor.conv_layers.0.conv.weight"
_UNUSED_HEADS = ("lm_head.", "quantizer.", "project_hid.", "project_q.", "projector.", "classifier.", "layer_weights")
_TRAINING_ONLY = {"masked_spec_embed"}
_POS_CONV = "encoder.pos_conv_embed.conv."
_KNOWN_STRIDES = {10: 5, 3: 2, 2: 2}


class Wav2Vec2WeightsError(ValueError):
    """A wav2vec2 checkpoint is missing, unreadable or does not match its config."""


def load_wav2vec2(path: str | Path) -> tuple[Wav2Vec2Model, bool]:
    """Return ``(model in eval mode on CPU, fp32; do_normalize)`` for a folder or single file."""
    path = Path(path)
    if path.is_dir():
        config, raw, do_normalize = _read_folder(path)
    elif path.is_file():
        raw = _read_tensors(path)
        config, do_normalize = None, True
    else:
        raise FileNotFoundError(f"wav2vec2 checkpoint not found: {path}")
    state_dict = normalize_state_dict(raw, str(path))
    if config is None:
        config = infer_config(state_dict, str(path))
    return build_model(config, state_dict, str(path)), do_normalize


def build_model(config: Wav2Vec2Config, state_dict: dict[str, torch.Tensor], source: str) -> Wav2Vec2Model:
    """Instantiate ``Wav2Vec2Model(config)`` and load ``state_dict`` strictly (fp32, eval)."""
    model = Wav2Vec2Model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict) - _TRAINING_ONLY)
    unexpected = sorted(set(state_dict) - set(expected) - _TRAINING_ONLY)
    wrong_shape = [
        f"{key}: file {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(state_dict) & set(expected))
        if state_dict[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensors: {_preview(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatch for {len(wrong_shape)} tensors: {_preview(wrong_shape)}")
    if problems:
        raise Wav2Vec2WeightsError(f"{source} does not match the wav2vec2 config: " + "; ".join(problems))
    floats = {
        key: value.float() if value.is_floating_point() else value for key, value in state_dict.items() if key in expected
    }
    for key in _TRAINING_ONLY & (set(expected) - set(floats)):
        floats[key] = torch.zeros_like(expected[key])
    model.load_state_dict(floats, strict=True)
    return model.float().eval()


def normalize_state_dict(raw: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Strip the checkpoint's key prefix, drop unused heads and use the parametrized weight-norm names."""
    anchors = [key for key in raw if key.endswith(_ANCHOR)]
    if len(anchors) != 1:
        raise Wav2Vec2WeightsError(
            f"{source} is not a wav2vec2 checkpoint: expected exactly one '*{_ANCHOR}' tensor, found {len(anchors)}"
        )
    prefix = anchors[0][: -len(_ANCHOR)]
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in raw.items():
        if not key.startswith(prefix):
            if any(key.startswith(head) for head in _UNUSED_HEADS):
                dropped.append(key)
                continue
            raise Wav2Vec2WeightsError(f"{source}: unexpected tensor {key!r} outside the '{prefix}' model prefix")
        name = key[len(prefix) :]
        if any(name.startswith(head) for head in _UNUSED_HEADS):
            dropped.append(key)
            continue
        if name == _POS_CONV + "weight_g":
            name = _POS_CONV + "parametrizations.weight.original0"
        elif name == _POS_CONV + "weight_v":
            name = _POS_CONV + "parametrizations.weight.original1"
        out[name] = value
    if dropped:
        logger.info("%s: ignoring %d tensors of unused heads (%s)", source, len(dropped), _preview(dropped, 3))
    return out


def infer_config(state_dict: dict[str, torch.Tensor], source: str) -> Wav2Vec2Config:
    """Derive a ``Wav2Vec2Config`` from tensor shapes (see module docstring for the assumptions)."""

    def need(key: str) -> torch.Tensor:
        if key not in state_dict:
            raise Wav2Vec2WeightsError(f"{source}: cannot infer the wav2vec2 config, tensor {key!r} is missing")
        return state_dict[key]

    conv_dim, conv_kernel = [], []
    while f"feature_extractor.conv_layers.{len(conv_dim)}.conv.weight" in state_dict:
        weight = state_dict[f"feature_extractor.conv_layers.{len(conv_dim)}.conv.weight"]
        conv_dim.append(int(weight.shape[0]))
        conv_kernel.append(int(weight.shape[2]))
    unknown = sorted(set(conv_kernel) - set(_KNOWN_STRIDES))
    if unknown:
        raise Wav2Vec2WeightsError(
            f"{source}: conv kernel sizes {unknown} are not those of the published wav2vec2 models, so the strides "
            "cannot be inferred; use a folder with its config.json instead"
        )
    last = len(conv_dim) - 1
    if f"feature_extractor.conv_layers.{last}.layer_norm.weight" in state_dict and last > 0:
        feat_extract_norm = "layer"
    elif "feature_extractor.conv_layers.0.layer_norm.weight" in state_dict:
        feat_extract_norm = "group"
    else:
        raise Wav2Vec2WeightsError(f"{source}: conv front-end has no normalisation layer; unsupported wav2vec2 variant")
    bias_key = f"feature_extractor.conv_layers.{min(1, last)}.conv.bias"

    hidden = int(need("feature_projection.projection.weight").shape[0])
    if hidden % 64:
        raise Wav2Vec2WeightsError(f"{source}: hidden size {hidden} is not a multiple of 64; give a folder with config.json")
    layers = 0
    while f"encoder.layers.{layers}.attention.q_proj.weight" in state_dict:
        layers += 1
    pos_weight = need(_POS_CONV + "parametrizations.weight.original1")
    return Wav2Vec2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        intermediate_size=int(need("encoder.layers.0.feed_forward.intermediate_dense.weight").shape[0]),
        conv_dim=conv_dim,
        conv_kernel=conv_kernel,
        conv_stride=[_KNOWN_STRIDES[k] for k in conv_kernel],
        conv_bias=bias_key in state_dict,
        feat_extract_norm=feat_extract_norm,
        do_stable_layer_norm=feat_extract_norm == "layer",
        num_conv_pos_embeddings=int(pos_weight.shape[2]),
        num_conv_pos_embedding_groups=hidden // int(pos_weight.shape[1]),
        mask_time_prob=0.0,
        vocab_size=32,
    )


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
"""Weight files read: safetensors, and pickles only through torch.load(weights_only=True) on a safe torch."""


def _read_json(path: Path):
    from ..loading import CheckpointError, read_json

    try:
        return read_json(path)
    except CheckpointError as error:
        raise Wav2Vec2WeightsError(str(error)) from None


def read_folder_config(folder: Path) -> tuple[Wav2Vec2Config, bool]:
    """``(config, do_normalize)`` of a Hugging Face wav2vec2 folder, with the same limits on what a
    config may ask for as the MEMO networks."""
    config_file = folder / "config.json"
    if not config_file.exists():
        raise Wav2Vec2WeightsError(f"wav2vec2 folder {folder} has no config.json")
    config_dict = _read_json(config_file)
    if not isinstance(config_dict, dict):
        raise Wav2Vec2WeightsError(f"{config_file}: must hold a JSON object")
    if config_dict.get("model_type", "wav2vec2") != "wav2vec2":
        raise Wav2Vec2WeightsError(f"{config_file}: model_type is {config_dict.get('model_type')!r}, expected 'wav2vec2'")
    from ..loading import CheckpointError, check_config_limits

    try:
        check_config_limits(config_dict, str(config_file))
        config = Wav2Vec2Config.from_dict(config_dict)
    except CheckpointError as error:
        raise Wav2Vec2WeightsError(str(error)) from None
    except (TypeError, ValueError) as error:
        raise Wav2Vec2WeightsError(f"{config_file}: invalid wav2vec2 config ({error})") from error

    do_normalize = True
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.exists():
        settings = _read_json(preprocessor)
        do_normalize = bool(settings.get("do_normalize", True)) if isinstance(settings, dict) else True
    return config, do_normalize


def folder_weight_files(folder: Path) -> list[Path]:
    """The weight files of a wav2vec2 folder, in the order the loader looks for them:
    model.safetensors, the shards of model.safetensors.index.json, pytorch_model.bin."""
    from ..loading import shard_path

    index = folder / "model.safetensors.index.json"
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_dir():
            raise Wav2Vec2WeightsError(f"{folder / name} is a folder where the weights file should be; remove or rename it")
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    if index.is_file():
        try:
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()), key=str)
        except (AttributeError, TypeError) as error:
            raise Wav2Vec2WeightsError(f"{index} is not a valid safetensors index: {error}") from None
        try:
            return [shard_path(folder, shard, index) for shard in shards]
        except ValueError as refusal:
            raise Wav2Vec2WeightsError(str(refusal)) from None
    if (folder / "pytorch_model.bin").is_file():
        return [folder / "pytorch_model.bin"]
    raise Wav2Vec2WeightsError(
        f"wav2vec2 folder {folder} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _read_folder(folder: Path) -> tuple[Wav2Vec2Config, dict[str, torch.Tensor], bool]:
    config, do_normalize = read_folder_config(folder)
    tensors = {}
    for path in folder_weight_files(folder):
        tensors.update(_read_tensors(path))
    return config, tensors, do_normalize


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        if path.suffix in (".bin", ".pt", ".pth"):
            from ..loading import require_safe_torch_load

            try:
                require_safe_torch_load(path)
            except ValueError as refusal:
                raise Wav2Vec2WeightsError(str(refusal)) from None
            data = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
                raise Wav2Vec2WeightsError(f"{path} does not hold a flat state dict of tensors")
            return data
    except Wav2Vec2WeightsError:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"wav2vec2 weights file not found: {path}") from None
    except Exception as error:  # corrupt files surface as many different library errors
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise Wav2Vec2WeightsError(f"cannot read wav2vec2 weights {path} (refused or corrupt): {reason}") from error
    raise Wav2Vec2WeightsError(f"{path}: unsupported weights format {path.suffix!r}; use .safetensors")


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
