"""wav2vec2 audio features at the video frame rate, computed the way MEMO does.

Procedure (official ``preprocess_audio`` + ``Wav2VecModel``), reproduced step by step:

1. normalise the whole 16 kHz waveform to zero mean / unit variance
   (``(x - mean) / sqrt(var + 1e-7)`` in float32, as ``Wav2Vec2FeatureExtractor``);
2. ``num_frames = ceil(N / 16000 * fps)`` in Python float arithmetic;
3. pad the *normalised* waveform with ``16000 // fps`` zeros per frame missing to
   reach a whole number of clips;
4. conv front-end, then linear resampling (``align_corners=True``) of its output to the
   padded frame count *before* ``feature_projection`` and the transformer, which
   therefore runs at the video frame rate; no attention mask;
5. keep every transformer layer output (``hidden_states[1:]``);
6. frame ``i`` is represented by frames ``i-2 .. i+2`` clamped to the track → ``[S, 5, L, H]``.

The network pieces are the stock transformers submodules (``feature_extractor``,
``feature_projection``, ``encoder.pos_conv_embed`` / ``layer_norm`` / ``layers``),
composed here rather than subclassing ``Wav2Vec2Model``.

Long audio. The official code runs one pass over the whole track, and its cost grows
with the track. Self-attention over S frames takes O(S²) time, and O(S²) memory whenever
it falls back to the eager kernel: 12 heads × 18000² floats = 15.6 GB per layer for
10 minutes at 30 fps. The conv front-end's first layer also holds 512 × N/5 floats
(3.9 GB per copy for 10 minutes in fp32, with several copies alive at once).
Above ``max_pass_seconds`` (default 60 s, i.e. 1800 positions at 30 fps) both stages
therefore run in windows:

* the conv front-end is exact: windows are cut on its output grid with the full
  receptive field, and the base model's GroupNorm (which normalises each channel over
  the *whole* track) uses statistics gathered in a first streaming pass;
* the transformer sees windows of at most ``max_pass_seconds`` whose kept centre has
  ``context_seconds`` (default 5 s) of neighbours on each side. This is an
  approximation, since attention no longer spans the whole track. With random weights,
  which attend almost uniformly (a worst case), ``bench/bench_audio_features.py`` (tiny
  config, 60 s windows, 5 s context) measured a relative RMS deviation from one pass of
  0.4 % for 1 minute of audio and 3.1 % for 10 minutes; the unit test (40 s of audio,
  20 s windows) measures 3.8 % and is held under 8 %. The deviation of the released checkpoint could not be
  measured here (no weights).

Memory then stays bounded by the window size: with base-size wav2vec2 on CPU, 3 minutes
took +2.8 GB in one pass against +1.1 GB windowed. The result holds S × L × H floats
(663 MB for 10 minutes of the base model), and :meth:`AudioFeatures.windows` builds the
5-frame windows per clip instead of materialising S × 5 × L × H.

Silence: normalisation of an all-zero track gives zeros (eps keeps it finite), so the
features are those of silence and the video shows an idle mouth. A near-silent track
is scaled up to unit variance, amplifying its noise floor; both cases log a warning
and proceed, as the official code would.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2Model

from .io import TARGET_SAMPLE_RATE, AudioClip
from .wav2vec2_weights import load_wav2vec2

logger = logging.getLogger(__name__)

NORMALIZE_EPS = 1e-7
WINDOW_RADIUS = 2  # frames on each side of the ±2 window
SILENCE_RMS = 1e-4  # about -80 dBFS


@dataclass(frozen=True)
class AudioFeatures:
    """Per-frame wav2vec2 layer outputs plus what the caller needs to trim and mux."""

    layer_features: torch.Tensor  # [padded_frames, layers, hidden], float32, CPU
    num_frames: int  # frames that carry real audio: ceil(duration * fps)
    padded_frames: int  # num_frames rounded up to whole clips
    fps: float
    duration_s: float  # length of the 16 kHz audio that was encoded

    def windows(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """``[stop-start, 5, layers, hidden]``: frames ``i-2..i+2`` (clamped) for each frame in range."""
        total = self.layer_features.shape[0]
        stop = total if stop is None else stop
        if not 0 <= start <= stop <= total:
            raise IndexError(f"frame range [{start}, {stop}) outside [0, {total})")
        offsets = torch.arange(-WINDOW_RADIUS, WINDOW_RADIUS + 1)
        index = (torch.arange(start, stop)[:, None] + offsets[None]).clamp_(0, total - 1)
        return self.layer_features[index]

    @property
    def audio_emb(self) -> torch.Tensor:
        """The official ``audio_emb`` ``[padded_frames, 5, layers, hidden]`` (memory-heavy for long audio)."""
        return self.windows()


class Wav2Vec2AudioEncoder:
    """A stock ``Wav2Vec2Model`` driven with MEMO's frame-rate resampling and layer stacking."""

    def __init__(self, model: Wav2Vec2Model, do_normalize: bool = True, source: str = "wav2vec2"):
        self.model = model.eval()
        self.do_normalize = do_normalize
        self.source = source
        config = model.config
        self._kernels = list(config.conv_kernel)[: config.num_feat_extract_layers]
        self._strides = list(config.conv_stride)[: config.num_feat_extract_layers]
        receptive = 1
        for kernel, stride in zip(reversed(self._kernels), reversed(self._strides)):
            receptive = (receptive - 1) * stride + kernel
        self.receptive_field = receptive  # input samples seen by one conv output frame
        self.total_stride = math.prod(self._strides)  # input samples between conv output frames

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        """Load a Hugging Face wav2vec2 folder or a single ComfyUI ``audio_encoders`` safetensors file."""
        model, do_normalize = load_wav2vec2(path)
        return cls(model.to(device=device, dtype=dtype), do_normalize=do_normalize, source=str(path))

    def networks(self) -> list[torch.nn.Module]:
        """The torch modules that run when features are extracted (for a model manager to place)."""
        return [self.model]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def conv_output_length(self, num_samples: int) -> int:
        length = num_samples
        for kernel, stride in zip(self._kernels, self._strides):
            length = (length - kernel) // stride + 1 if length >= kernel else 0
        return length

    @torch.no_grad()
    def conv_features(self, waveform: np.ndarray, max_samples: int | None = None, on_progress=None) -> torch.Tensor:
        """Conv front-end output ``[conv_frames, conv_dim]`` (float32, CPU); windowed above ``max_samples``."""
        extractor = self.model.feature_extractor
        total = self.conv_output_length(len(waveform))
        if total == 0:
            raise ValueError(f"waveform of {len(waveform)} samples is shorter than the wav2vec2 receptive field ({self.receptive_field})")
        if max_samples is None or len(waveform) <= max_samples:
            features = extractor(self._to_model(waveform)[None])[0]
            return features.T.float().cpu()

        first = extractor.conv_layers[0]
        group_stats = self._first_layer_stats(waveform, max_samples) if self.model.config.feat_extract_norm == "group" else None
        frames_per_window = max(1, (max_samples - self.receptive_field) // self.total_stride + 1)
        pieces = []
        begins = range(0, total, frames_per_window)
        for index, begin in enumerate(begins, start=1):
            end = min(begin + frames_per_window, total)
            chunk = waveform[begin * self.total_stride : (end - 1) * self.total_stride + self.receptive_field]
            hidden = self._to_model(chunk)[None, None]
            if group_stats is None:
                hidden = first(hidden)
            else:
                mean, scale, shift = group_stats
                hidden = first.conv(hidden).sub_(mean).mul_(scale).add_(shift)  # in place: this is the largest tensor
                hidden = first.activation(hidden)
            for layer in extractor.conv_layers[1:]:
                hidden = layer(hidden)
            pieces.append(hidden[0].T.float().cpu())
            if on_progress is not None:
                on_progress(index / len(begins))
        return torch.cat(pieces)

    def _first_layer_stats(self, waveform: np.ndarray, max_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first conv's GroupNorm over the whole track as per-channel ``(mean, scale, shift)``."""
        first = self.model.feature_extractor.conv_layers[0]
        kernel, stride = self._kernels[0], self._strides[0]
        positions = (len(waveform) - kernel) // stride + 1
        per_window = max(1, (max_samples - kernel) // stride + 1)
        count = 0
        mean = torch.zeros(first.conv.out_channels, dtype=torch.float64)
        sum_sq_dev = torch.zeros_like(mean)
        for begin in range(0, positions, per_window):
            end = min(begin + per_window, positions)
            chunk = waveform[begin * stride : (end - 1) * stride + kernel]
            out = first.conv(self._to_model(chunk)[None, None])[0]
            var_w, mean_w = torch.var_mean(out.float(), dim=1, correction=0)
            mean_w, var_w, n = mean_w.double().cpu(), var_w.double().cpu(), end - begin
            # Chan et al. pairwise update: exact merge of per-window mean / variance.
            delta = mean_w - mean
            mean = mean + delta * (n / (count + n))
            sum_sq_dev = sum_sq_dev + var_w * n + delta * delta * (count * n / (count + n))
            count += n
        var = sum_sq_dev / count
        scale = first.layer_norm.weight.double().cpu() / torch.sqrt(var + first.layer_norm.eps)
        shift = first.layer_norm.bias.double().cpu()
        return tuple(t[:, None].to(self.device, self.dtype) for t in (mean, scale, shift))

    @torch.no_grad()
    def encode(self, frame_features: torch.Tensor, max_frames: int | None = None, context_frames: int = 0,
               on_progress=None) -> torch.Tensor:
        """Transformer layer outputs ``[frames, layers, hidden]`` for conv features already at the frame rate.

        With ``max_frames`` set, longer inputs run in windows of at most ``max_frames``,
        each output frame taken from a window that extends ``context_frames`` beyond it
        on both sides where the track allows.
        """
        frames = frame_features.shape[0]
        if max_frames is None or frames <= max_frames:
            return self._encode_window(frame_features)
        core = max_frames - 2 * context_frames
        if core < 1:
            raise ValueError(f"max_frames={max_frames} leaves no room for context_frames={context_frames} on both sides")
        pieces = []
        starts = range(0, frames, core)
        for index, start in enumerate(starts, start=1):
            stop = min(start + core, frames)
            low = max(0, min(start - context_frames, frames - max_frames))
            high = min(frames, low + max_frames)
            window = self._encode_window(frame_features[low:high])
            pieces.append(window[start - low : stop - low])
            if on_progress is not None:
                on_progress(index / len(starts))
        return torch.cat(pieces)

    def _encode_window(self, frame_features: torch.Tensor) -> torch.Tensor:
        model = self.model
        encoder = model.encoder
        hidden, _ = model.feature_projection(frame_features.to(self.device, self.dtype)[None])
        hidden = hidden + encoder.pos_conv_embed(hidden)
        if not model.config.do_stable_layer_norm:
            hidden = encoder.layer_norm(hidden)
        hidden = encoder.dropout(hidden)
        outputs = []
        for layer in encoder.layers:
            hidden = layer(hidden, attention_mask=None)
            if isinstance(hidden, tuple):  # transformers 4.x layers return (hidden_states, ...)
                hidden = hidden[0]
            outputs.append(hidden)
        if model.config.do_stable_layer_norm:
            outputs[-1] = encoder.layer_norm(hidden)  # the last recorded hidden state is post-norm there
        return torch.stack(outputs, dim=2)[0].float().cpu()

    def _to_model(self, samples: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(samples)).to(self.device, self.dtype)


def normalize_waveform(samples: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the whole track, in float32 like ``Wav2Vec2FeatureExtractor``."""
    samples = np.asarray(samples, dtype=np.float32)
    return (samples - samples.mean()) / np.sqrt(samples.var() + NORMALIZE_EPS)


def frame_count(num_samples: int, fps: float, sample_rate: int = TARGET_SAMPLE_RATE) -> int:
    """Video frames covered by the audio: ``ceil(N / sample_rate * fps)`` in float, as the official code."""
    return math.ceil(num_samples / sample_rate * fps)


def extract_audio_features(
    encoder: Wav2Vec2AudioEncoder,
    audio: AudioClip | np.ndarray,
    fps: float = 30,
    frames_per_clip: int | None = 16,
    max_pass_seconds: float | None = 60.0,
    context_seconds: float = 5.0,
    on_progress=None,
) -> AudioFeatures:
    """MEMO's audio features for a 16 kHz mono track (see module docstring).

    ``frames_per_clip=None`` disables the padding to whole clips. ``max_pass_seconds=None``
    forces a single pass however long the audio is (exactly the official behaviour).
    ``on_progress(fraction)`` is called as windows finish (conv front end: first half, transformer:
    second half); it may raise to cancel.
    """
    if isinstance(audio, AudioClip):
        if audio.sample_rate != TARGET_SAMPLE_RATE:
            raise ValueError(f"audio {audio.source!r} is at {audio.sample_rate} Hz; wav2vec2 needs {TARGET_SAMPLE_RATE} Hz (use load_audio)")
        samples, name = audio.samples, audio.source
    else:
        samples, name = np.asarray(audio), "waveform"
    if samples.ndim != 1:
        raise ValueError(f"audio {name!r} must be mono 1-D samples, got shape {samples.shape}")
    if samples.size == 0:
        raise ValueError(f"audio {name!r} is empty")
    if not np.isfinite(samples).all():
        raise ValueError(f"audio {name!r} contains NaN/inf samples")
    if isinstance(fps, bool) or not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if frames_per_clip is not None and frames_per_clip < 1:
        raise ValueError(f"frames_per_clip must be >= 1 or None, got {frames_per_clip}")

    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    if rms < SILENCE_RMS:
        logger.warning(
            "audio %r is %s (RMS %.2e); wav2vec2 normalisation %s, so the video will show little or no speech motion",
            name,
            "silent" if rms == 0 else "nearly silent",
            rms,
            "keeps it at zero" if rms == 0 else "amplifies its noise floor to unit variance",
        )

    values = normalize_waveform(samples) if encoder.do_normalize else samples.astype(np.float32)
    num_frames = frame_count(len(samples), fps)
    padded_frames = num_frames
    if frames_per_clip is not None and num_frames % frames_per_clip:
        missing = frames_per_clip - num_frames % frames_per_clip
        values = np.concatenate([values, np.zeros(missing * int(TARGET_SAMPLE_RATE // fps), dtype=np.float32)])
        padded_frames += missing
    if len(values) < encoder.receptive_field:
        raise ValueError(
            f"audio {name!r} is too short: {len(samples)} samples ({len(samples) / TARGET_SAMPLE_RATE * 1000:.1f} ms) "
            f"give {len(values)} after padding, below the wav2vec2 receptive field of {encoder.receptive_field} samples"
        )

    if max_pass_seconds is None:
        max_samples = max_frames = None
        context_frames = 0
    else:
        max_samples = int(max_pass_seconds * TARGET_SAMPLE_RATE)
        max_frames = max(1, round(max_pass_seconds * fps))
        context_frames = round(context_seconds * fps)

    report = (lambda low: (lambda fraction: on_progress(low + fraction / 2))) if on_progress else (lambda low: None)
    conv = encoder.conv_features(values, max_samples=max_samples, on_progress=report(0.0))
    resampled = F.interpolate(conv.T[None], size=padded_frames, mode="linear", align_corners=True)[0].T
    layers = encoder.encode(resampled, max_frames=max_frames, context_frames=context_frames, on_progress=report(0.5))
    if on_progress is not None:
        on_progress(1.0)
    return AudioFeatures(
        layer_features=layers,
        num_frames=num_frames,
        padded_frames=padded_frames,
        fps=float(fps),
        duration_s=len(samples) / TARGET_SAMPLE_RATE,
    )
