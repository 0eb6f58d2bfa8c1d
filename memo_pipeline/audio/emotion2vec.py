"""emotion2vec backbone (a data2vec 2.0 audio encoder) in plain PyTorch, without funasr.

MEMO labels emotions from the time-averaged last-layer features of emotion2vec_plus_large. This
module rebuilds the network that funasr's ``Emotion2vec`` runs at inference time (funasr 1.0.27,
the version MEMO pins) and loads the released ``model.pt`` without unpickling arbitrary objects.

Data flow for one waveform, as in ``Emotion2vec.extract_features`` with ``mask=False``:

1. conv feature extractor (wav2vec 2.0 style; layer-norm variant for emotion2vec);
2. LayerNorm + Linear to ``embed_dim``;
3. plus a stack of grouped convolutions as relative positional encoding;
4. learned "extra tokens" are prepended;
5. ``prenet_depth`` transformer blocks (the modality context encoder), then ``depth`` more, all
   with an ALiBi distance bias scaled by a learned non-negative factor per head;
6. the extra tokens are dropped again. The mean over time of what remains is the utterance feature.

The module and parameter names mirror funasr's, so checkpoint keys load unchanged. Training-only
parts (dropout, masking, the pretraining decoder, EMA) are not built; their checkpoint entries are
ignored, like the classification head ``proj``, which MEMO does not build either (``vocab_size=-1``).
"""

from __future__ import annotations

import ast
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000

_CONV_SPEC_RELEASED = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


@dataclass(frozen=True)
class Emotion2VecConfig:
    """Architecture hyper-parameters. Defaults are emotion2vec_plus_large's.

    Source of the defaults: the ``config.yaml`` published next to emotion2vec_plus_large's
    ``model.pt`` (Hugging Face emotion2vec/emotion2vec_plus_large, 5552 bytes, uploaded 2024-05-15;
    read from a verbatim copy in github payammohammadi94/emotion-recognation). Its keys are
    ``model_conf.{embed_dim, depth, num_heads, mlp_ratio, norm_eps, norm_affine, layer_norm_first}``
    and ``model_conf.modalities.audio.*``. The published checkpoint itself could not be inspected
    here; the loader checks every tensor shape against this config.
    """

    embed_dim: int = 1024
    depth: int = 8  # main blocks, after the prenet
    num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5  # transformer blocks and context-encoder norm only
    norm_affine: bool = True
    feature_encoder_spec: tuple[tuple[int, int, int], ...] = _CONV_SPEC_RELEASED  # (channels, kernel, stride)
    extractor_mode: str = "layer_norm"  # or "default": GroupNorm after the first conv only
    conv_pos_width: int = 95
    conv_pos_depth: int = 5
    conv_pos_groups: int = 16
    conv_pos_pre_ln: bool = False
    prenet_depth: int = 4
    num_extra_tokens: int = 10
    num_alibi_heads: int = 16
    alibi_scale_per_head: bool = True
    alibi_scale_per_layer: bool = False

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, f.type, getattr(self, f.name)))
        if not self.feature_encoder_spec:
            raise ValueError("feature_encoder_spec must list at least one (channels, kernel, stride) layer")
        if any(min(layer) < 1 for layer in self.feature_encoder_spec):
            raise ValueError(f"feature_encoder_spec {self.feature_encoder_spec} must hold positive values")
        if self.extractor_mode not in ("layer_norm", "default"):
            raise ValueError(f"extractor_mode must be 'layer_norm' or 'default', got {self.extractor_mode!r}")
        if self.embed_dim < 1 or self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be a positive multiple of num_heads {self.num_heads}")
        if not 1 <= self.num_alibi_heads <= self.num_heads:
            raise ValueError(f"num_alibi_heads must be in [1, num_heads={self.num_heads}], got {self.num_alibi_heads}")
        if self.conv_pos_depth < 1 or self.conv_pos_width < 1:
            raise ValueError("conv_pos_depth and conv_pos_width must be positive")
        if self.conv_pos_groups < 1 or self.embed_dim % self.conv_pos_groups:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by conv_pos_groups {self.conv_pos_groups}")
        if self.depth < 0 or self.prenet_depth < 0 or self.num_extra_tokens < 0:
            raise ValueError("depth, prenet_depth and num_extra_tokens must be non-negative")
        if self.alibi_scale_per_layer and self.depth + self.prenet_depth == 0:
            raise ValueError("alibi_scale_per_layer needs at least one transformer block")

    @property
    def pos_conv_kernel(self) -> int:
        return max(3, self.conv_pos_width // self.conv_pos_depth)

    @property
    def min_input_samples(self) -> int:
        """Shortest waveform that yields one feature frame (the conv stack's receptive field)."""
        n = 1
        for _, kernel, stride in reversed(self.feature_encoder_spec):
            n = (n - 1) * stride + kernel
        return n

    def num_frames(self, num_samples: int) -> int:
        """Feature frames produced for ``num_samples`` input samples."""
        n = num_samples
        for _, kernel, stride in self.feature_encoder_spec:
            n = (n - kernel) // stride + 1
        return max(n, 0)

    @classmethod
    def from_model_conf(cls, conf: Mapping) -> Emotion2VecConfig:
        """Build from funasr's ``model_conf`` mapping (the ``model_conf`` section of config.yaml).

        Settings that no released emotion2vec checkpoint uses and that this port does not
        implement are refused rather than ignored.
        """
        if not isinstance(conf, Mapping):
            raise ValueError(f"model_conf must be a mapping, got {type(conf).__name__}")
        try:
            audio = conf["modalities"]["audio"]
        except (KeyError, TypeError):
            raise ValueError("model_conf has no 'modalities.audio' section; is this an emotion2vec config?") from None
        if conf.get("layer_norm_first", False):
            raise ValueError(
                "layer_norm_first=True (pre-LN blocks) is not supported: no released emotion2vec model uses it, "
                "and funasr's pre-LN block drops its MLP residual"
            )
        if not audio.get("use_alibi_encoder", True) or audio.get("learned_alibi", False):
            raise ValueError("only a fixed ALiBi bias with a learned scale is supported (use_alibi_encoder, no learned_alibi)")
        values = {k: conf[k] for k in _TOP_KEYS if conf.get(k) is not None}
        values.update({ours: audio[theirs] for ours, theirs in _AUDIO_KEYS.items() if audio.get(theirs) is not None})
        cfg = cls(**values)
        if cfg.alibi_scale_per_layer and audio.get("model_depth", cfg.depth) != cfg.depth:
            raise ValueError("learned_alibi_scale_per_layer needs modalities.audio.model_depth == depth")
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> Emotion2VecConfig:
        """Read a funasr ``config.yaml`` (safe YAML loader, no code execution)."""
        import yaml  # PyYAML ships with transformers

        with open(path, encoding="utf-8") as f:
            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as error:  # unsafe tags (python objects) land here too: one line, no traceback
                reason = " ".join(str(error).split())
                raise ValueError(f"{path}: not a plain YAML config ({reason[:200]}); refused") from None
        if not isinstance(data, Mapping) or "model_conf" not in data:
            raise ValueError(f"{path}: no 'model_conf' section; expected a funasr emotion2vec config.yaml")
        return cls.from_model_conf(data["model_conf"])


# Where each config field lives in funasr's model_conf (top level, or modalities.audio).
_TOP_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "norm_eps", "norm_affine")
_AUDIO_KEYS = {
    **{k: k for k in (
        "feature_encoder_spec", "extractor_mode", "conv_pos_width", "conv_pos_depth", "conv_pos_groups",
        "conv_pos_pre_ln", "prenet_depth", "num_extra_tokens", "num_alibi_heads",
    )},  # fmt: skip
    "alibi_scale_per_head": "learned_alibi_scale_per_head",
    "alibi_scale_per_layer": "learned_alibi_scale_per_layer",
}


def _coerce(name: str, kind: str, value):
    """Config values as the annotated type; YAML may give e.g. ``1e-05`` as a string."""
    try:
        if kind == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind == "int":
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise TypeError
            return int(float(value))
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind == "str":
            return str(value)
        if isinstance(value, str):
            return parse_conv_spec(value)
        spec = tuple(tuple(int(v) for v in layer) for layer in value)
        if any(len(layer) != 3 for layer in spec):
            raise ValueError
        return spec
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"emotion2vec config {name}={value!r} is not a valid {kind}") from None


def parse_conv_spec(text: str) -> tuple[tuple[int, int, int], ...]:
    """Parse fairseq's ``feature_encoder_spec`` string, e.g. ``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``.

    funasr ``eval``s this string; here only list/tuple literals of integers joined by ``+`` and
    ``*`` are accepted, so a config file cannot run code.
    """

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            repeats = [v for v in (left, right) if type(v) is int]
            if isinstance(node.op, ast.Mult) and len(repeats) == 1 and repeats[0] > 64:
                raise ValueError(f"repeat count too large in feature_encoder_spec {text!r}")
            result = left + right if isinstance(node.op, ast.Add) else left * right
            if isinstance(result, (list, tuple)) and len(result) > 256:
                raise ValueError(f"feature_encoder_spec {text!r} is implausibly long")
            return result
        raise ValueError(f"unsupported element in feature_encoder_spec {text!r}")

    try:
        spec = value(ast.parse(str(text), mode="eval").body)
    except (SyntaxError, TypeError) as e:
        raise ValueError(f"cannot parse feature_encoder_spec {text!r}: {e}") from None
    if not isinstance(spec, list) or not all(isinstance(t, tuple) and len(t) == 3 for t in spec):
        raise ValueError(f"feature_encoder_spec {text!r} must be a list of (channels, kernel, stride) tuples")
    return tuple(spec)


class _Transpose(nn.Module):
    """Swaps the last two dims (channels-first convs <-> channels-last norms)."""

    def forward(self, x):
        return x.transpose(-2, -1)


class _TrimEnd(nn.Module):
    """Drops the extra trailing step that symmetric padding leaves after an even-sized kernel."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x):
        return x[..., : x.shape[-1] - self.remove]


class _Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32 (as fairseq's feature extractor does), cast back."""

    def forward(self, x):
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class _Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm evaluated in float32, cast back."""

    def forward(self, x):
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).type_as(x)


class ConvFeatureExtractor(nn.Module):
    """Strided 1-D convs from raw samples to frames, ``(B, L) -> (B, C, T)``.

    Each layer is ``Sequential(conv, <dropout slot>, norm?, GELU)``; the empty slot keeps the
    fairseq index of the norm (``conv_layers.i.2``) so checkpoint keys match.
    """

    def __init__(self, spec, mode: str):
        super().__init__()
        self.conv_layers = nn.ModuleList()
        in_ch = 1
        for i, (ch, kernel, stride) in enumerate(spec):
            layer = [nn.Conv1d(in_ch, ch, kernel, stride=stride, bias=False), nn.Identity()]
            if mode == "layer_norm":
                layer.append(nn.Sequential(_Transpose(), _Fp32LayerNorm(ch), _Transpose()))
            elif i == 0:
                layer.append(_Fp32GroupNorm(ch, ch))
            layer.append(nn.GELU())
            self.conv_layers.append(nn.Sequential(*layer))
            in_ch = ch

    def forward(self, x):
        x = x.unsqueeze(1)
        for layer in self.conv_layers:
            x = layer(x)
        return x


def _relative_positional_encoder(cfg: Emotion2VecConfig) -> nn.Sequential:
    """Grouped convs over time (channels-last in and out), each followed by LayerNorm and GELU."""
    dim, k = cfg.embed_dim, cfg.pos_conv_kernel
    layers = [
        nn.Sequential(
            nn.Conv1d(dim, dim, k, padding=k // 2, groups=cfg.conv_pos_groups),
            _TrimEnd(k),
            _Transpose(),
            nn.LayerNorm(dim, elementwise_affine=False),
            _Transpose(),
            nn.GELU(),
        )
        for _ in range(cfg.conv_pos_depth)
    ]
    encoder = nn.Sequential(_Transpose(), *layers, _Transpose())
    return nn.Sequential(nn.LayerNorm(dim), encoder) if cfg.conv_pos_pre_ln else encoder


def _slopes(n: int) -> list[float]:
    if math.log2(n).is_integer():
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]
    base = 2 ** math.floor(math.log2(n))
    return _slopes(base) + _slopes(2 * base)[0::2][: n - base]


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Per-head ALiBi slopes (Press et al.): a geometric series; for head counts that are not a
    power of two, the closest smaller power of two plus every other slope of the next one."""
    return torch.tensor(_slopes(num_heads), dtype=torch.float32)


def alibi_bias(num_heads: int, length: int, device=None) -> torch.Tensor:
    """Symmetric distance penalty ``-slope_h * |i - j|``, float32, shape ``(heads, length, length)``."""
    pos = torch.arange(length, device=device)
    distance = -(pos[None, :] - pos[:, None]).abs()
    return alibi_slopes(num_heads).to(device)[:, None, None] * distance[None]


class _Attention(nn.Module):
    """Multi-head self-attention; the ALiBi bias is added to the first heads in float32."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, bias):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits.float()
            logits[:, : bias.shape[1]] += bias
        attn = logits.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Post-LN transformer block (data2vec 2.0 ``AltBlock`` with ``layer_norm_first=False``)."""

    def __init__(self, cfg: Emotion2VecConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.attn = _Attention(dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.mlp = _Mlp(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x, bias=None):
        x = self.norm1(x + self.attn(x, bias))
        return self.norm2(x + self.mlp(x))


class _ContextEncoder(nn.Module):
    """The audio prenet: LayerNorm, then ``prenet_depth`` blocks."""

    def __init__(self, cfg: Emotion2VecConfig):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.prenet_depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)


class AudioEncoder(nn.Module):
    """funasr's ``modality_encoders.AUDIO``: everything up to and including the prenet."""

    def __init__(self, cfg: Emotion2VecConfig):
        super().__init__()
        ch = cfg.feature_encoder_spec[-1][0]
        self.local_encoder = ConvFeatureExtractor(cfg.feature_encoder_spec, cfg.extractor_mode)
        self.project_features = nn.Sequential(_Transpose(), nn.LayerNorm(ch), nn.Linear(ch, cfg.embed_dim))
        self.relative_positional_encoder = _relative_positional_encoder(cfg)
        self.context_encoder = _ContextEncoder(cfg)
        if cfg.num_extra_tokens > 0:
            self.extra_tokens = nn.Parameter(torch.zeros(1, cfg.num_extra_tokens, cfg.embed_dim))
        else:
            self.extra_tokens = None
        layers = cfg.prenet_depth + cfg.depth if cfg.alibi_scale_per_layer else 1
        heads = cfg.num_alibi_heads if cfg.alibi_scale_per_head else 1
        self.alibi_scale = nn.Parameter(torch.ones(layers, 1, heads, 1, 1))


class Emotion2Vec(nn.Module):
    """emotion2vec backbone, inference only. ``forward``: normalised waveforms ``(B, L)`` ->
    frame features ``(B, T, embed_dim)``; ``utterance_embedding``: raw waveforms -> ``(B, embed_dim)``."""

    def __init__(self, config: Emotion2VecConfig | None = None):
        super().__init__()
        self.config = config = config or Emotion2VecConfig()
        self.modality_encoders = nn.ModuleDict({"AUDIO": AudioEncoder(config)})
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))

    @property
    def min_input_samples(self) -> int:
        return self.config.min_input_samples

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        """Frame features of already normalised waveforms (see ``utterance_embedding``)."""
        cfg, enc = self.config, self.modality_encoders["AUDIO"]
        x = enc.project_features(enc.local_encoder(source))
        x = x + enc.relative_positional_encoder(x)

        # ALiBi bias (float32), scaled by the clamped learned factor; zero for the extra tokens.
        bias = alibi_bias(cfg.num_alibi_heads, x.shape[1], x.device)[None]
        scales = enc.alibi_scale.float().clamp_min(0)
        if scales.shape[0] == 1:
            bias, scales = bias * scales[0], None
        n = cfg.num_extra_tokens
        bias = F.pad(bias, (n, 0, n, 0))
        if enc.extra_tokens is not None:
            x = torch.cat([enc.extra_tokens.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)

        x = enc.context_encoder.norm(x)
        all_blocks = list(enc.context_encoder.blocks) + list(self.blocks)
        for i, block in enumerate(all_blocks):
            x = block(x, bias if scales is None else bias * scales[i])
        return x[:, n:]

    def utterance_embedding(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Mean last-layer feature of each waveform, as MEMO feeds its emotion classifier.

        ``waveforms``: 16 kHz samples, ``(L,)`` or ``(B, L)``. Each row is first normalised to zero
        mean and unit variance over its whole length (``F.layer_norm``, eps 1e-5), as MEMO does
        before ``extract_features``. Returns float ``(B, embed_dim)`` in the model dtype.
        """
        x = self._check_waveforms(waveforms)
        x = F.layer_norm(x, x.shape[-1:])
        param = next(self.parameters())
        return self(x.to(device=param.device, dtype=param.dtype)).mean(dim=1)

    def _check_waveforms(self, waveforms) -> torch.Tensor:
        if not isinstance(waveforms, torch.Tensor):
            raise ValueError(f"waveforms must be a torch.Tensor, got {type(waveforms).__name__}")
        if waveforms.ndim not in (1, 2):
            raise ValueError(f"waveforms must be (samples,) or (batch, samples), got shape {tuple(waveforms.shape)}")
        if not waveforms.dtype.is_floating_point:
            raise ValueError(f"waveforms must be floating point samples, got {waveforms.dtype}")
        x = waveforms.float().reshape(-1, waveforms.shape[-1])
        if x.shape[-1] < self.min_input_samples:
            raise ValueError(
                f"audio too short for emotion2vec: {x.shape[-1]} samples, need at least {self.min_input_samples} "
                f"({1000 * self.min_input_samples / SAMPLE_RATE:g} ms at 16 kHz)"
            )
        if not torch.isfinite(x).all():
            raise ValueError("waveforms contain NaN or infinite samples")
        return x

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        config: Emotion2VecConfig | str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Emotion2Vec:
        """Load a released checkpoint (``model.pt`` or a ``.safetensors`` conversion).

        ``config``: an ``Emotion2VecConfig``, a path to funasr's ``config.yaml``, or ``None`` to use
        ``config.yaml`` next to the checkpoint when present, else the emotion2vec_plus_large defaults.
        ``.pt`` files are opened with ``torch.load(weights_only=True)``: plain tensors and containers
        only, never arbitrary pickled objects.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"emotion2vec checkpoint not found: {path}")
        if config is None:
            side = path.parent / "config.yaml"
            config = Emotion2VecConfig.from_yaml(side) if side.is_file() else Emotion2VecConfig()
        elif not isinstance(config, Emotion2VecConfig):
            config = Emotion2VecConfig.from_yaml(config)
        with torch.device("meta"):
            model = cls(config)
        state = match_checkpoint_keys(read_checkpoint(path), model.state_dict(), str(path))
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def read_checkpoint(path: str | Path) -> Mapping[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors, or a torch pickle opened with ``weights_only=True``.

    Like funasr, a nested ``state_dict`` / ``model_state_dict`` / ``model`` entry is unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    from ..loading import require_safe_torch_load

    require_safe_torch_load(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # noqa: BLE001 - re-raised with the reason weights_only gives
        raise ValueError(
            f"{path}: could not be read as a tensors-only checkpoint with torch.load(weights_only=True). "
            "The released emotion2vec_plus_large model.pt holds only tensors and dicts; a file that needs "
            f"other Python objects is refused instead of unpickled. Reason: {_first_line(e)}"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a mapping of tensors, got {type(obj).__name__}")
    return obj


# funasr's loader tries these source prefixes for every model key (the released config.yaml has
# scope_map ['d2v_model.', none]; 'module.' is always appended); the last one present wins.
_SOURCE_PREFIXES = ("module.", "d2v_model.", "")


def match_checkpoint_keys(src: Mapping, expected: Mapping, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Pick each expected key from ``src`` (with funasr's prefix rules) and check its shape.

    Unlike funasr, which keeps random weights for missing or mis-shaped entries, this raises.
    Unused entries (pretraining decoder, ``proj`` head, EMA copies) are skipped.
    """
    out, missing, mismatched, used = {}, [], [], set()
    for key, ref in expected.items():
        src_key = next((p + key for p in _SOURCE_PREFIXES if p + key in src), None)
        if src_key is None:
            missing.append(key)
            continue
        used.add(src_key)
        value = src[src_key]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name}: entry {src_key!r} is not a tensor")
        if tuple(value.shape) != tuple(ref.shape):
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(ref.shape)}")
        out[key] = value
    if missing or mismatched:
        lines = [f"missing: {k}" for k in missing[:8]] + mismatched[:8]
        more = len(missing) + len(mismatched) - len(lines)
        raise ValueError(
            f"{name} does not fit this emotion2vec config ({len(missing)} missing, {len(mismatched)} wrong shape); "
            "pass the checkpoint's own config.yaml. " + "; ".join(lines) + (f"; ... {more} more" if more > 0 else "")
        )
    # Encoder weights beyond the config (e.g. more blocks) are ignored, as funasr ignores them,
    # but that usually means the wrong config.yaml, so say so.
    unused = [k for k in src if k not in used]
    encoder = [
        k for k in unused if _unprefixed(k).startswith(("blocks.", "modality_encoders.AUDIO.")) and ".decoder." not in k
    ]
    if encoder:
        logger.warning(
            "%s: %d encoder entries not used by this config (e.g. %s); funasr ignores them too", name, len(encoder), encoder[0]
        )
    logger.debug("%s: %d unused entries ignored", name, len(unused))
    return out


def _unprefixed(key: str) -> str:
    for prefix in _SOURCE_PREFIXES[:-1]:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key
