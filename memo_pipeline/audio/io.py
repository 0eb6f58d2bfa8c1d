"""Load any audio input as the mono 16 kHz float32 signal that wav2vec2 and emotion2vec expect.

Inputs: a file (wav, flac, mp3, m4a/aac, ogg/opus, or anything else FFmpeg decodes,
read through PyAV), a ComfyUI ``AUDIO`` dict ``{"waveform": [B, C, T], "sample_rate": int}``,
or a bare waveform ``[C, T]`` / ``[T]`` (tensor or array) with its sample rate.

Conversion as in the official preprocessing, which runs ``ffmpeg -i in -ar 16000 out.wav``
and then ``librosa.load(out.wav, sr=16000)``:

* every channel is resampled by FFmpeg's libswresample (through PyAV's ``AudioResampler``,
  the same library and defaults as the ffmpeg command) straight from the decoded samples,
  so an integer file is resampled in swresample's 16-bit path exactly as the command does;
* the result is 16-bit PCM, as in the official intermediate wav (quantised, full scale clips);
* the channels are then averaged in float32, as ``librosa.load(..., mono=True)`` does.

Waveforms (ComfyUI ``AUDIO``, tensors, arrays) go through the same steps from float samples,
as a float wav file would. ``resample`` is the plain float resampler, for other uses.

Bad input policy: missing, empty, corrupt or audio-less files, zero channels, zero
samples, non-finite samples and invalid sample rates raise :class:`AudioLoadError`
naming the source. Silence is not an error here (see ``features.py``).
"""

from __future__ import annotations

import logging
import math
import os
from fractions import Fraction
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

TARGET_SAMPLE_RATE = 16000
logger = logging.getLogger("memo_pipeline")


class AudioLoadError(ValueError):
    """The audio input cannot be turned into a usable signal; the message names the source."""


@dataclass(frozen=True)
class AudioClip:
    """Mono float32 samples at ``sample_rate`` plus where they came from."""

    samples: np.ndarray
    sample_rate: int
    source: str
    original_sample_rate: int
    original_channels: int
    channels: np.ndarray | None = None  # [C, T] at sample_rate before the mono mix (the official 16-bit wav)

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate


def load_audio(source: Any, sample_rate: int | None = None, target_rate: int = TARGET_SAMPLE_RATE) -> AudioClip:
    """Decode / convert ``source`` to mono float32 at ``target_rate``.

    ``source`` is a path, a ComfyUI AUDIO dict, or a waveform (then ``sample_rate`` is required).
    """
    converted = None
    if isinstance(source, (str, os.PathLike)):
        channels, rate, converted = _decode_file(Path(source), target_rate)
        name = str(source)
    elif isinstance(source, dict):
        channels, rate, name = _from_comfy_audio(source)
    elif isinstance(source, (torch.Tensor, np.ndarray)):
        if sample_rate is None:
            raise AudioLoadError("a bare waveform needs its sample_rate")
        channels, rate, name = _waveform_channels(source, "waveform"), sample_rate, "waveform"
    else:
        raise AudioLoadError(f"unsupported audio input of type {type(source).__name__}; give a path, an AUDIO dict or a waveform")

    rate = _check_rate(rate, name)
    if channels.shape[0] == 0:
        raise AudioLoadError(f"audio {name!r} has no channels")
    if channels.shape[1] == 0:
        raise AudioLoadError(f"audio {name!r} is empty (0 samples)")
    bad = int(np.count_nonzero(~np.isfinite(channels)))
    if bad:
        raise AudioLoadError(
            f"audio {name!r} contains {bad} NaN/inf samples out of {channels.size}; the file or upstream node is broken"
        )
    if converted is None:
        converted = np.stack([_swresample([_float_frame(channel, rate)], target_rate)[0] for channel in channels])
    mono = converted.mean(axis=0) if converted.shape[0] > 1 else converted[0]
    return AudioClip(
        samples=np.ascontiguousarray(mono, dtype=np.float32),
        sample_rate=target_rate,
        source=name,
        original_sample_rate=rate,
        original_channels=int(channels.shape[0]),
        channels=converted,
    )


def resample(signal: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """A 1-D float signal resampled by libswresample (FFmpeg's default filter), in float32."""
    if from_rate == to_rate:
        return signal
    frame = _float_frame(np.asarray(signal, dtype=np.float32), from_rate)
    return _swresample([frame], to_rate, sample_format="fltp")[0].astype(signal.dtype, copy=False)


def _float_frame(samples: np.ndarray, rate: int):
    import av

    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32)[None], format="fltp", layout="mono")
    frame.sample_rate = rate
    frame.pts = 0
    frame.time_base = Fraction(1, rate)
    return frame


class _Converter:
    """A libswresample conversion to ``rate`` set up as the ffmpeg command line sets it up:
    frames in, ``[C, T]`` float32 out (16-bit samples scaled by 1/32768 for ``s16``, as
    ``ffmpeg -ar RATE out.wav`` writes them).

    swresample computes in 16-bit fixed point when both ends are 16-bit or narrower, in float
    up to 32-bit and in double beyond; the command line gets that choice from its format
    negotiation, here it is stated (PyAV's own `AudioResampler` would always compute in float,
    which is up to 3 levels off on 16-bit files)."""

    def __init__(self, rate: int, sample_format: str = "s16"):
        self.rate, self.sample_format = rate, sample_format
        self._graph = self._sink = None
        self._chunks: list[np.ndarray] = []

    def _configure(self, frame) -> None:
        import av

        out_bytes = av.AudioFormat(self.sample_format).bytes
        in_bytes = frame.format.bytes
        internal = "s16p" if max(in_bytes, out_bytes) <= 2 else ("fltp" if max(in_bytes, out_bytes) <= 4 else "dblp")
        graph = av.filter.Graph()
        source = graph.add_abuffer(format=frame.format.name, sample_rate=frame.sample_rate, layout=frame.layout.name,
                                   time_base=Fraction(1, frame.sample_rate))
        resample = graph.add("aresample", f"{self.rate}:internal_sample_fmt={internal}")
        convert = graph.add("aformat", f"sample_fmts={self.sample_format}:sample_rates={self.rate}")
        self._sink = graph.add("abuffersink")
        source.link_to(resample)
        resample.link_to(convert)
        convert.link_to(self._sink)
        graph.configure()
        self._graph = graph

    def push(self, frame) -> None:
        import av

        if self._graph is None:
            if frame is None:
                return
            self._configure(frame)
        self._graph.push(frame)
        while True:
            try:
                out = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return
            data = out.to_ndarray()
            if not out.format.is_planar:
                data = data.reshape(-1, out.layout.nb_channels).T
            self._chunks.append(data)

    def finish(self) -> np.ndarray:
        self.push(None)
        data = np.concatenate(self._chunks, axis=1) if self._chunks else np.zeros((1, 0), np.int16)
        if data.dtype == np.int16:
            return (data / np.float32(32768)).astype(np.float32)
        return data.astype(np.float32, copy=False)


def _swresample(frames, rate: int, sample_format: str = "s16") -> np.ndarray:
    converter = _Converter(rate, sample_format)
    for frame in frames:
        converter.push(frame)
    return converter.finish()


def _check_rate(rate: Any, name: str) -> int:
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise AudioLoadError(f"audio {name!r} has an invalid sample rate {rate!r}") from None
    if not math.isfinite(value) or value <= 0 or value != int(value):
        raise AudioLoadError(f"audio {name!r} has an invalid sample rate {rate!r}; expected a positive integer (Hz)")
    return int(value)


# Integer PCM -> float in [-1, 1): (value - offset) / scale, as FFmpeg converts them.
_INT_SCALES = {
    np.dtype(np.uint8): (128.0, 128.0),
    np.dtype(np.int16): (0.0, 32768.0),
    np.dtype(np.int32): (0.0, 2147483648.0),
    np.dtype(np.int64): (0.0, 9223372036854775808.0),
}


def _to_float32(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype in _INT_SCALES:
        offset, scale = _INT_SCALES[array.dtype]
        return ((array.astype(np.float64) - offset) / scale).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    raise AudioLoadError(f"audio {name!r} has unsupported sample type {array.dtype}")


def _waveform_channels(waveform: Any, name: str) -> np.ndarray:
    """``[C, T]`` float32 from a ``[C, T]`` or ``[T]`` tensor/array."""
    if isinstance(waveform, torch.Tensor):
        if waveform.is_complex():
            raise AudioLoadError(f"audio {name!r} is complex-valued")
        waveform = waveform.detach().cpu()
        if waveform.dtype in (torch.float16, torch.bfloat16):
            waveform = waveform.float()
        waveform = waveform.numpy()
    array = np.asarray(waveform)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2:
        raise AudioLoadError(f"audio {name!r} waveform must be [channels, samples] or [samples], got shape {tuple(array.shape)}")
    return _to_float32(array, name)


def _from_comfy_audio(audio: dict) -> tuple[np.ndarray, Any, str]:
    name = str(audio.get("filename") or audio.get("path") or "AUDIO input")
    if "waveform" not in audio or "sample_rate" not in audio:
        raise AudioLoadError(f"audio {name!r}: an AUDIO dict needs 'waveform' and 'sample_rate', got keys {sorted(audio)}")
    waveform = audio["waveform"]
    shape = tuple(getattr(waveform, "shape", ()))
    if len(shape) == 3:
        if shape[0] != 1:
            raise AudioLoadError(
                f"audio {name!r} is a batch of {shape[0]} tracks; MEMO drives one video from one track, pass a single track"
            )
        waveform = waveform[0]
    return _waveform_channels(waveform, name), audio["sample_rate"], name


def _decode_file(path: Path, target_rate: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Decode the first audio stream of ``path``: ``[C, T]`` float32 at its own rate, and the
    same frames converted by libswresample to 16-bit ``[C, T']`` at ``target_rate``."""
    import av

    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise AudioLoadError(f"audio file {str(path)!r} is empty (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioLoadError(f"file {str(path)!r} has no audio stream")
            stream = container.streams.audio[0]
            chunks: list[np.ndarray] = []
            rate = converter = None
            for frame in container.decode(stream):
                if rate is None:
                    rate = frame.sample_rate
                    converter = _Converter(target_rate)
                elif frame.sample_rate != rate:
                    raise AudioLoadError(f"audio file {str(path)!r} changes sample rate mid-stream ({rate} -> {frame.sample_rate} Hz)")
                chunks.append(_frame_channels(frame, str(path)))
                converter.push(frame)
            if not chunks:
                raise AudioLoadError(f"audio file {str(path)!r} decodes to no samples")
            widths = {chunk.shape[0] for chunk in chunks}
            if len(widths) != 1:
                raise AudioLoadError(f"audio file {str(path)!r} changes channel count mid-stream ({sorted(widths)})")
            channels = np.concatenate(chunks, axis=1)
            converted = converter.finish()
            _warn_if_truncated(path, stream, container, channels.shape[1] / rate)
    except av.error.FFmpegError as error:
        raise AudioLoadError(f"cannot decode audio file {str(path)!r}: {error}") from error
    return channels, rate, converted


def _warn_if_truncated(path: Path, stream, container, decoded_s: float) -> None:
    """A file whose header promises more audio than it holds (cut off while copying or writing)."""
    declared = None
    if stream.duration is not None and stream.time_base is not None:
        declared = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        declared = container.duration / 1_000_000
    if declared is not None and declared - decoded_s > max(0.1, 0.01 * declared):
        logger.warning("audio file %s is truncated: its header says %.2f s but it holds %.2f s of audio; "
                       "the video follows the %.2f s that are there", path, declared, decoded_s, decoded_s)


def _frame_channels(frame: Any, name: str) -> np.ndarray:
    channels = frame.layout.nb_channels
    if channels == 0:
        raise AudioLoadError(f"audio {name!r} has no channels")
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: one row of interleaved samples
        data = data.reshape(-1, channels).T
    return _to_float32(data, name)


VOCAL_MODES = ("official", "full-band")


def separate_vocals_like_memo(source: Any, separator, mode: str = "official", clip: AudioClip | None = None, *,
                              peak_normalize: bool = True, on_progress=None) -> AudioClip:
    """The vocals MEMO extracts features from, as a mono 16 kHz `AudioClip`.

    ``official``: the order of the official preprocessing: the 16 kHz 16-bit track (``clip``, as
    `load_audio` gives it) is what the separator sees, so it separates content below 8 kHz only;
    the stem comes back at 16 kHz, is stored as 16-bit and mixed to mono. ``full-band``: the
    decoded track at its own rate is separated instead (cleaner vocals, but not what MEMO did).
    ``separator`` is an `MDXVocalSeparator` (Kim_Vocal_2).
    """
    if mode not in VOCAL_MODES:
        raise ValueError(f"unknown vocal separation mode {mode!r}; use one of {', '.join(VOCAL_MODES)}")
    clip = clip if clip is not None else load_audio(source)
    if mode == "official":
        channels, rate = clip.channels if clip.channels is not None else clip.samples[None], clip.sample_rate
    else:
        native = load_audio(source, target_rate=clip.original_sample_rate)
        channels, rate = native.channels if native.channels is not None else native.samples[None], native.sample_rate
    extra = {"peak_normalize": peak_normalize} if not peak_normalize else {}
    if on_progress is not None:
        extra["on_progress"] = on_progress
    vocals = np.asarray(separator.separate(channels[:2], rate, output_sample_rate=TARGET_SAMPLE_RATE, **extra),
                        dtype=np.float32)
    vocals = np.clip(np.rint(vocals.reshape(-1, vocals.shape[-1]) * 32768), -32768, 32767) / np.float32(32768)
    mono = vocals.astype(np.float32).mean(axis=0)
    return AudioClip(np.ascontiguousarray(mono, dtype=np.float32), TARGET_SAMPLE_RATE, f"vocals of {clip.source}",
                     clip.original_sample_rate, clip.original_channels, vocals.astype(np.float32))
