"""Vocal separation with an MDX-Net ONNX model (``Kim_Vocal_2.onnx``), optional.

MEMO feeds wav2vec the *vocal stem* of the input audio instead of the raw mix,
so music or noise under a voice does not drive the mouth. The official code gets
that stem from ``audio-separator==0.24.1`` with ``misc/vocal_separator/
Kim_Vocal_2.onnx``. This module runs the same model directly with onnxruntime
and a numpy/scipy STFT, without torch, librosa or audio-separator.

Signal path (per 44.1 kHz stereo mix)::

    peak-normalise -> pad -> Hann-weighted overlapping chunks ->
    STFT -> zero bins 0..2 -> model [1, 4, dim_f, dim_t] -> ISTFT ->
    overlap-add -> crop -> x compensate -> (peak-normalise) -> resample

Where the numbers come from
---------------------------
* Model parameters, from UVR's model table ``TRvlvr/application_data``
  ``mdx_model_data/model_data_new.json`` (also ``model_data.json``), entry
  ``970b3f9492014d18fefeedfe4773cb42``: ``compensate`` 1.009,
  ``mdx_dim_f_set`` 3072, ``mdx_dim_t_set`` 8 (dim_t = 2**8 = 256),
  ``mdx_n_fft_scale_set`` 7680, ``primary_stem`` "Vocals". audio-separator
  picks the entry by the MD5 of the file's last 10,000 KiB (see
  :func:`uvr_model_hash`). That this hash is the one of ``Kim_Vocal_2.onnx`` is
  stated by several independent public projects; it could not be checked here
  because the weights cannot be downloaded.
* Run-time defaults of ``audio_separator.Separator`` 0.24.1 (the version MEMO
  pins, which constructs it with defaults): ``hop_length`` 1024,
  ``segment_size`` 256 (= dim_t, so the ONNX graph is run as is),
  ``overlap`` 0.25, ``enable_denoise`` False, ``sample_rate`` 44100,
  ``normalization_threshold`` 0.9, ``amplification_threshold`` 0.6.
* Procedure (audio-separator ``mdx_separator.py`` / UVR ``separate.py``
  ``SeperateMDX``): mono is duplicated to stereo; the STFT is torch's
  ``center=True`` reflect-padded transform with a periodic Hann window; the
  complex spectrum is laid out as channels ``[L.re, L.im, R.re, R.im]`` and cut
  to the first ``dim_f`` bins (the rest are zero on the way back); the first 3
  bins are zeroed before the model; chunks are ``hop * (dim_t - 1)`` samples,
  the mix is padded with ``n_fft // 2`` zeros in front and up to a multiple of
  ``chunk - n_fft`` plus ``n_fft // 2`` behind; chunks advance by
  ``int((1 - overlap) * chunk)`` and are blended with a symmetric Hann window
  (a box when overlap is 0); the stem is multiplied by ``compensate``. With
  denoise the model also runs on the negated spectrum and the two results are
  averaged with the sign undone, which cancels the part of the output that
  does not flip with the input.
* Levels: 0.24.1 peak-normalises the mix into [0.6, 0.9] before the model and
  normalises the stem the same way before writing it (``peak_normalize=True``
  here). With ``peak_normalize=False`` the stem is returned at the input's
  level instead (the input gain is undone), as later audio-separator versions do.

Not verified here: the model file itself (its hash, its input name and shape
``[batch, 4, 3072, 256]``, taken from public notes), and numeric agreement with
audio-separator on real music. audio-separator loads files with librosa (soxr
resampling); this module resamples with ``scipy.signal.resample_poly``, so
results differ slightly for inputs that are not 44.1 kHz.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.fft
from scipy.signal import get_window, resample_poly

logger = logging.getLogger(__name__)

MODEL_SAMPLE_RATE = 44100
# audio-separator / UVR identify a model by the MD5 of its last 10,000 KiB.
_HASH_TAIL_BYTES = 10000 * 1024
# Bins 0..2 (below ~17 Hz at n_fft 7680) are zeroed before inference.
_ZEROED_LOW_BINS = 3
# audio-separator 0.24.1 defaults: normalization / amplification thresholds.
_PEAK_MAX = 0.9
_PEAK_MIN = 0.6


class VocalSeparationUnavailable(RuntimeError):
    """Separation cannot run (no onnxruntime, no or unusable model file).

    Callers catch this to tell the user and continue with the unseparated mix.
    """


@dataclass(frozen=True)
class MDXParams:
    """Fixed parameters an MDX-Net ONNX model was trained with."""

    n_fft: int
    dim_f: int
    dim_t: int
    compensate: float
    hop: int = 1024
    overlap: float = 0.25

    def __post_init__(self) -> None:
        for name in ("n_fft", "dim_f", "dim_t", "hop"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"MDXParams.{name} must be a positive int, got {value!r}")
        if self.n_fft % 2:
            raise ValueError(f"MDXParams.n_fft must be even, got {self.n_fft}")
        if self.dim_f > self.n_fft // 2 + 1:
            raise ValueError(f"MDXParams.dim_f={self.dim_f} exceeds the {self.n_fft // 2 + 1} STFT bins")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"MDXParams.overlap must be in [0, 1), got {self.overlap}")
        if not (math.isfinite(self.compensate) and self.compensate > 0):
            raise ValueError(f"MDXParams.compensate must be a positive number, got {self.compensate}")
        if self.chunk_size <= self.n_fft:
            raise ValueError(
                f"chunk of hop*(dim_t-1)={self.chunk_size} samples must be longer than n_fft={self.n_fft}"
            )
        if self.step < 1:
            raise ValueError(f"overlap={self.overlap} leaves no step between chunks")

    @property
    def chunk_size(self) -> int:
        """Samples per model call: dim_t STFT frames with a centred transform."""
        return self.hop * (self.dim_t - 1)

    @property
    def trim(self) -> int:
        return self.n_fft // 2

    @property
    def step(self) -> int:
        return int((1.0 - self.overlap) * self.chunk_size)


KIM_VOCAL_2 = MDXParams(n_fft=7680, dim_f=3072, dim_t=256, compensate=1.009)
KIM_VOCAL_2_HASH = "970b3f9492014d18fefeedfe4773cb42"
KNOWN_MODELS: dict[str, MDXParams] = {KIM_VOCAL_2_HASH: KIM_VOCAL_2}


def uvr_model_hash(path: str | os.PathLike) -> str:
    """MD5 of the file's last 10,000 KiB (all of it if smaller): UVR's model key."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        fh.seek(max(0, size - _HASH_TAIL_BYTES))
        digest = hashlib.md5()
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- STFT


def _hann(n_fft: int) -> np.ndarray:
    return get_window("hann", n_fft, fftbins=True).astype(np.float32)


def mdx_stft(wave: np.ndarray, n_fft: int, hop: int, dim_f: int) -> np.ndarray:
    """``[B, 2, L]`` stereo -> ``[B, 4, dim_f, 1 + L // hop]`` (re/im as channels).

    Matches ``torch.stft(center=True, pad_mode="reflect", window=hann(periodic))``
    followed by MDX's channel layout ``[L.re, L.im, R.re, R.im]``.
    """
    if wave.ndim != 3 or wave.shape[1] != 2:
        raise ValueError(f"expected [batch, 2, samples], got {wave.shape}")
    pad = n_fft // 2
    if wave.shape[-1] <= pad:
        raise ValueError(f"need more than {pad} samples for a centred STFT, got {wave.shape[-1]}")
    padded = np.pad(wave.astype(np.float32, copy=False), ((0, 0), (0, 0), (pad, pad)), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)[..., ::hop, :]
    spec = scipy.fft.rfft(frames * _hann(n_fft), axis=-1)[..., :dim_f]  # [B, 2, T, dim_f]
    batch, _, n_frames, _ = spec.shape
    out = np.empty((batch, 2, 2, dim_f, n_frames), dtype=np.float32)
    out[:, :, 0] = spec.real.transpose(0, 1, 3, 2)
    out[:, :, 1] = spec.imag.transpose(0, 1, 3, 2)
    return out.reshape(batch, 4, dim_f, n_frames)


def mdx_istft(spec: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Inverse of :func:`mdx_stft`: bins above ``dim_f`` are taken as zero.

    Returns ``[B, 2, hop * (T - 1)]`` like ``torch.istft(center=True)``.
    """
    if spec.ndim != 4 or spec.shape[1] != 4:
        raise ValueError(f"expected [batch, 4, bins, frames], got {spec.shape}")
    batch, _, dim_f, n_frames = spec.shape
    n_bins = n_fft // 2 + 1
    parts = spec.reshape(batch, 2, 2, dim_f, n_frames).astype(np.float32, copy=False)
    full = np.zeros((batch, 2, n_frames, n_bins), dtype=np.complex64)
    full[..., :dim_f].real = parts[:, :, 0].transpose(0, 1, 3, 2)
    full[..., :dim_f].imag = parts[:, :, 1].transpose(0, 1, 3, 2)
    window = _hann(n_fft)
    frames = scipy.fft.irfft(full, n=n_fft, axis=-1).astype(np.float32, copy=False) * window
    total = n_fft + hop * (n_frames - 1)
    signal = np.zeros((batch, 2, total), dtype=np.float32)
    envelope = np.zeros(total, dtype=np.float32)
    window_sq = window * window
    for t in range(n_frames):
        start = t * hop
        signal[..., start : start + n_fft] += frames[:, :, t]
        envelope[start : start + n_fft] += window_sq
    pad = n_fft // 2
    signal = signal[..., pad : total - pad]
    envelope = envelope[pad : total - pad]
    if np.any(envelope < 1e-11):
        raise ValueError(f"hop={hop} too large for n_fft={n_fft}: window overlap-add is not invertible")
    return signal / envelope


# ------------------------------------------------------------------ input handling


def _as_numpy(waveform) -> np.ndarray:
    if hasattr(waveform, "detach"):  # torch tensor, without importing torch
        waveform = waveform.detach().cpu()
        if not waveform.dtype.is_floating_point or waveform.dtype.itemsize < 4:
            waveform = waveform.float()
        waveform = waveform.numpy()
    return np.asarray(waveform)


def _check_waveform(waveform, sample_rate) -> tuple[np.ndarray, bool]:
    """Return ``[C, N]`` float64 and whether the input was 1-D."""
    wave = _as_numpy(waveform)
    if not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"waveform must be floating point, got dtype {wave.dtype}")
    if wave.ndim == 1:
        was_1d = True
        wave = wave[None]
    elif wave.ndim == 2 and wave.shape[0] in (1, 2):
        was_1d = False
    else:
        raise ValueError(
            f"waveform must be [samples] or [channels, samples] with 1 or 2 channels, got shape {wave.shape}"
        )
    if wave.shape[-1] == 0:
        raise ValueError("waveform is empty")
    if not np.all(np.isfinite(wave)):
        raise ValueError("waveform contains NaN or infinite samples")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    return wave.astype(np.float64, copy=False), was_1d


def _resample(wave: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst:
        return wave
    g = math.gcd(src, dst)
    return resample_poly(wave, dst // g, src // g, axis=-1)


def _fit_length(wave: np.ndarray, length: int) -> np.ndarray:
    if wave.shape[-1] >= length:
        return wave[..., :length]
    return np.pad(wave, ((0, 0), (0, length - wave.shape[-1])))


def _peak_normalize(wave: np.ndarray) -> tuple[np.ndarray, float]:
    """Scale the peak into [0.6, 0.9] (audio-separator 0.24.1); return the gain."""
    peak = float(np.max(np.abs(wave)))
    if peak > _PEAK_MAX:
        gain = _PEAK_MAX / peak
    elif 0.0 < peak < _PEAK_MIN:
        gain = _PEAK_MIN / peak
    else:
        gain = 1.0
    return wave * gain, gain


# --------------------------------------------------------------------- separator


def _default_providers(ort) -> list[str]:
    available = set(ort.get_available_providers())
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


class MDXVocalSeparator:
    """An MDX-Net ONNX model, loaded once, that extracts the vocal stem.

    ``params=None`` looks the file up by its UVR hash (:data:`KNOWN_MODELS`);
    an unknown file whose input shape matches Kim_Vocal_2 is run with those
    parameters after a warning, anything else needs explicit ``params``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        params: MDXParams | None = None,
        *,
        denoise: bool = False,
        providers: Sequence[str] | None = None,
        num_threads: int | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise VocalSeparationUnavailable(
                "vocal separation needs the 'onnxruntime' package (pip install onnxruntime); "
                "continue without separation or install it"
            ) from exc
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise VocalSeparationUnavailable(
                f"vocal separation model not found: {model_path} "
                "(expected Kim_Vocal_2.onnx under misc/vocal_separator/ of the MEMO checkpoint)"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
        try:
            self._session = ort.InferenceSession(
                model_path,
                sess_options=options,
                providers=list(providers) if providers is not None else _default_providers(ort),
            )
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise VocalSeparationUnavailable(f"could not load vocal separation model {model_path}: {exc}") from exc

        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1 or len(inputs[0].shape) != 4:
            raise VocalSeparationUnavailable(
                f"{model_path} is not an MDX-Net model: expected one input [batch, 4, dim_f, dim_t], "
                f"got inputs {[(i.name, i.shape) for i in inputs]}"
            )
        self._input_name = inputs[0].name
        shape = [_static(d) for d in inputs[0].shape]
        self.params = params if params is not None else self._params_for(model_path, shape)
        expected = [None, 4, self.params.dim_f, self.params.dim_t]
        for axis in (1, 2, 3):
            if shape[axis] is not None and shape[axis] != expected[axis]:
                raise VocalSeparationUnavailable(
                    f"{model_path} takes input shape {inputs[0].shape}, "
                    f"but the parameters need [batch, 4, {self.params.dim_f}, {self.params.dim_t}]"
                )
        self.model_path = model_path
        self.denoise = bool(denoise)

    @staticmethod
    def _params_for(model_path: str, shape: list[int | None]) -> MDXParams:
        digest = uvr_model_hash(model_path)
        if digest in KNOWN_MODELS:
            return KNOWN_MODELS[digest]
        if shape[1:] == [4, KIM_VOCAL_2.dim_f, KIM_VOCAL_2.dim_t]:
            logger.warning(
                "%s has UVR hash %s, not Kim_Vocal_2's %s; using Kim_Vocal_2 parameters because the input "
                "shape matches", model_path, digest, KIM_VOCAL_2_HASH,
            )
            return KIM_VOCAL_2
        raise VocalSeparationUnavailable(
            f"unknown MDX-Net model {model_path} (UVR hash {digest}, input {shape}); pass MDXParams explicitly"
        )

    # -- inference ------------------------------------------------------------

    def _run(self, spec: np.ndarray) -> np.ndarray:
        out = self._session.run(None, {self._input_name: np.ascontiguousarray(spec, dtype=np.float32)})[0]
        if out.shape != spec.shape:
            raise VocalSeparationUnavailable(
                f"{self.model_path} returned shape {out.shape} for input {spec.shape}; not an MDX-Net model"
            )
        return out

    def _separate_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """``[2, chunk_size]`` -> ``[2, chunk_size]`` vocal estimate."""
        p = self.params
        spec = mdx_stft(chunk[None], p.n_fft, p.hop, p.dim_f)
        spec[:, :, :_ZEROED_LOW_BINS, :] = 0.0
        if self.denoise:
            pred = 0.5 * self._run(spec) - 0.5 * self._run(-spec)
        else:
            pred = self._run(spec)
        return mdx_istft(pred, p.n_fft, p.hop)[0]

    def _demix(self, mix: np.ndarray, on_progress=None) -> np.ndarray:
        """Chunked, Hann-blended inference over a ``[2, N]`` 44.1 kHz mix."""
        p = self.params
        n = mix.shape[-1]
        gen = p.chunk_size - 2 * p.trim
        tail = gen + p.trim - n % gen
        padded = np.concatenate(
            [np.zeros((2, p.trim), np.float32), mix.astype(np.float32), np.zeros((2, tail), np.float32)], axis=1
        )
        total = padded.shape[-1]
        acc = np.zeros((2, total), dtype=np.float32)
        weight = np.zeros(total, dtype=np.float32)
        starts = range(0, total, p.step)
        for index, start in enumerate(starts, start=1):
            end = min(start + p.chunk_size, total)
            chunk = padded[:, start:end]
            if chunk.shape[-1] < p.chunk_size:
                chunk = np.pad(chunk, ((0, 0), (0, p.chunk_size - chunk.shape[-1])))
            estimate = self._separate_chunk(chunk)[:, : end - start]
            w = (np.hanning(end - start) if p.overlap > 0 else np.ones(end - start)).astype(np.float32)
            acc[:, start:end] += estimate * w
            weight[start:end] += w
            if on_progress is not None:
                on_progress(index / len(starts))
        blended = np.divide(acc, weight, out=np.zeros_like(acc), where=weight > 0)
        return blended[:, p.trim : p.trim + n]

    def separate(
        self,
        waveform,
        sample_rate: int,
        *,
        output_sample_rate: int | None = None,
        peak_normalize: bool = True,
        on_progress=None,
    ) -> np.ndarray:
        """Vocal stem of ``waveform`` (``[N]`` or ``[C, N]``, C in 1..2, float).

        ``on_progress(fraction)`` is called after every model chunk; it may raise to cancel.

        Returns float32 with the input's layout (1-D stays 1-D, mono is the
        mean of the model's two output channels) at ``output_sample_rate``
        (default: the input's), ``ceil(N * out_rate / sample_rate)`` samples.
        ``peak_normalize`` follows MEMO's audio-separator (peak in [0.6, 0.9]);
        otherwise the stem keeps the input's level.
        """
        wave, was_1d = _check_waveform(waveform, sample_rate)
        out_rate = sample_rate if output_sample_rate is None else output_sample_rate
        if isinstance(out_rate, bool) or not isinstance(out_rate, (int, np.integer)) or out_rate <= 0:
            raise ValueError(f"output_sample_rate must be a positive int, got {output_sample_rate!r}")
        channels, n = wave.shape
        out_len = math.ceil(n * out_rate / sample_rate)

        if not np.any(wave):  # silence: nothing to separate, and no peak to normalise by
            silent = np.zeros((channels, out_len), np.float32)
            return silent[0] if was_1d else silent

        mix = _resample(wave, sample_rate, MODEL_SAMPLE_RATE).astype(np.float32)
        if channels == 1:
            mix = np.repeat(mix, 2, axis=0)
        mix, gain = _peak_normalize(mix)
        vocals = self._demix(mix, on_progress) * self.params.compensate
        if peak_normalize:
            vocals, _ = _peak_normalize(vocals)
        else:
            vocals = vocals / gain
        if channels == 1:
            vocals = vocals.mean(axis=0, keepdims=True)
        vocals = _fit_length(_resample(vocals, MODEL_SAMPLE_RATE, int(out_rate)), out_len).astype(np.float32)
        return vocals[0] if was_1d else vocals


def separate_vocals(
    waveform,
    sample_rate: int,
    model_path: str | os.PathLike,
    *,
    output_sample_rate: int | None = None,
    peak_normalize: bool = True,
    params: MDXParams | None = None,
    denoise: bool = False,
    providers: Sequence[str] | None = None,
) -> np.ndarray:
    """One-shot :class:`MDXVocalSeparator` ``(model_path).separate(...)``."""
    separator = MDXVocalSeparator(model_path, params, denoise=denoise, providers=providers)
    return separator.separate(
        waveform, sample_rate, output_sample_rate=output_sample_rate, peak_normalize=peak_normalize
    )
