"""Streaming H.264/AAC mp4 writer, so a long video never sits whole in RAM.

MEMO produces video clip by clip; :class:`VideoWriter` encodes each clip as it
arrives (libx264, yuv420p, CRF) and muxes the input audio (AAC) alongside it.
As in MEMO's ``tensor_to_video``, the result lasts as long as the shorter of
video and audio: frames past ``ceil(samples * fps / sample_rate)`` are dropped
and the audio is cut where the last frame ends.

``metadata`` (e.g. ComfyUI's ``prompt`` and ``workflow``) goes into the mp4 as container tags, each
value as its JSON text, as ComfyUI's own Save Video writes it (``movflags=use_metadata_tags``), so
the ComfyUI editor restores the graph from a dropped file; :func:`read_video_metadata` reads them.

The file is written under a hidden temporary name in the target folder and
renamed on a successful :meth:`VideoWriter.close`; on error or cancellation the
temporary file is deleted and nothing appears (or is replaced) at the target.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from fractions import Fraction

import numpy as np

try:  # PyAV is a hard dependency of the package; fail with a readable message.
    import av
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError("memo_pipeline.video_io needs PyAV: pip install av") from _exc

AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
_FALLBACK_AUDIO_RATE = 48000
_AUDIO_BLOCK = 1024  # AAC-LC frame size
X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo",
)
_NTSC_BASES = (24, 30, 48, 60, 120)


def as_fps_fraction(fps) -> Fraction:
    """Exact frame rate; floats near ``N * 1000 / 1001`` become that NTSC ratio."""
    if isinstance(fps, bool):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if isinstance(fps, Fraction):
        rate = fps
    elif isinstance(fps, (int, np.integer)):
        rate = Fraction(int(fps))
    elif isinstance(fps, (float, np.floating)):
        if not math.isfinite(fps):
            raise ValueError(f"fps must be finite, got {fps!r}")
        rate = None
        for base in _NTSC_BASES:
            ntsc = Fraction(base * 1000, 1001)
            if abs(fps - float(ntsc)) < 5e-3:
                rate = ntsc
                break
        if rate is None:
            rate = Fraction(float(fps)).limit_denominator(1001)
    else:
        raise ValueError(f"fps must be a number, got {type(fps).__name__}")
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return rate


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.dtype.itemsize < 4:  # half/bfloat16 have no numpy twin
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _prepare_audio(audio) -> tuple[np.ndarray, int, int, int]:
    """``(waveform, sr)`` -> (float32 planar ``[C, N]``, encode rate, input samples, input rate)."""
    if not (isinstance(audio, (tuple, list)) and len(audio) == 2):
        raise ValueError("audio must be a (waveform, sample_rate) pair or None")
    wave, sr = _to_numpy(audio[0]), audio[1]
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise ValueError(f"audio sample rate must be a positive int, got {sr!r}")
    sr = int(sr)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2 or wave.shape[0] not in (1, 2):
        raise ValueError(f"audio waveform must be [samples] or [channels, samples] with 1-2 channels, got {wave.shape}")
    if wave.shape[1] == 0:
        raise ValueError("audio waveform is empty")
    if np.issubdtype(wave.dtype, np.integer) and wave.dtype != np.uint8:
        wave = wave.astype(np.float32) / float(np.iinfo(wave.dtype).max + 1)
    elif not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"audio waveform must be float or signed PCM, got dtype {wave.dtype}")
    wave = wave.astype(np.float32, copy=False)
    if not np.all(np.isfinite(wave)):
        raise ValueError("audio waveform contains NaN or infinite samples")
    n_input, input_rate = wave.shape[1], sr
    if sr not in AAC_SAMPLE_RATES:
        from scipy.signal import resample_poly

        g = math.gcd(sr, _FALLBACK_AUDIO_RATE)
        wave = resample_poly(wave, _FALLBACK_AUDIO_RATE // g, sr // g, axis=-1).astype(np.float32)
        wave = wave[:, : math.ceil(n_input * _FALLBACK_AUDIO_RATE / sr)]
        sr = _FALLBACK_AUDIO_RATE
    return np.ascontiguousarray(wave), sr, n_input, input_rate


def _check_clip(frames) -> np.ndarray | object:
    """Validate a clip's shape/dtype without copying it; return it (numpy or torch)."""
    if hasattr(frames, "detach"):
        shape, dtype = tuple(frames.shape), frames.dtype
        ok = dtype.is_floating_point or str(dtype) == "torch.uint8"
    else:
        frames = np.asarray(frames)
        shape, dtype = frames.shape, frames.dtype
        ok = np.issubdtype(dtype, np.floating) or dtype == np.uint8
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"a clip must be [frames, height, width, 3] (RGB), got shape {shape}")
    if not ok:
        raise ValueError(f"frames must be float in [0, 1] or uint8, got dtype {dtype}")
    return frames


def frame_to_uint8(frame) -> np.ndarray:
    """One frame as the exact 8-bit RGB array the encoder is given (batch keeps these losslessly)."""
    arr = _to_numpy(frame)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if not np.all(np.isfinite(arr)):
        raise ValueError("frames contain NaN or infinite values")
    return np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


class VideoWriter:
    """Encode clips ``[F, H, W, 3]`` (float in [0, 1] or uint8) into an mp4.

    ``audio=(waveform, sample_rate)`` (``[N]`` or ``[C, N]``, C = 1 or 2) is
    muxed as AAC and caps the frame count at ``ceil(N * fps / sample_rate)``.
    ``metadata`` ``{key: JSON-serialisable value}`` is stored as container tags (JSON text).
    Use as a context manager, or call :meth:`close` / :meth:`abort` yourself.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps,
        audio=None,
        *,
        crf: float = 18,
        preset: str = "medium",
        audio_bitrate: int = 192_000,
        metadata: dict | None = None,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.fps = as_fps_fraction(fps)
        if isinstance(crf, bool) or not isinstance(crf, (int, float)) or not 0 <= crf <= 51:
            raise ValueError(f"crf must be a number in [0, 51], got {crf!r}")
        if preset not in X264_PRESETS:
            raise ValueError(f"preset must be one of {', '.join(X264_PRESETS)}; got {preset!r}")
        if isinstance(audio_bitrate, bool) or not isinstance(audio_bitrate, int) or audio_bitrate <= 0:
            raise ValueError(f"audio_bitrate must be a positive int (bits/s), got {audio_bitrate!r}")
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"output folder does not exist: {folder}")
        if os.path.isdir(self.path):
            raise IsADirectoryError(f"output path is a folder: {self.path}")
        self._crf, self._preset, self._audio_bitrate = crf, preset, audio_bitrate
        tags = _metadata_tags(metadata)

        self._audio = None
        self.max_frames: int | None = None
        if audio is not None:
            self._audio, self._audio_rate, n_input, input_rate = _prepare_audio(audio)
            self.max_frames = math.ceil(Fraction(n_input) * self.fps / input_rate)
        self._audio_pos = 0

        self.frames_written = 0
        self.frames_dropped = 0
        self.width: int | None = None
        self.height: int | None = None
        self._video_stream = None
        self._audio_stream = None
        self._closed = False
        self._tmp_path = os.path.join(folder, f".{os.path.basename(self.path)}.{uuid.uuid4().hex[:8]}.part")
        try:
            # Free-form keys are only kept in mp4 with use_metadata_tags (as ComfyUI's Save Video opens it).
            options = {"movflags": "use_metadata_tags"} if tags else {}
            self._container = av.open(self._tmp_path, mode="w", format="mp4", options=options)
        except Exception as exc:
            self._closed = True
            self._remove_tmp()
            raise OSError(f"cannot create a video file in {folder}: {exc}") from exc
        for key, value in tags.items():  # before the header is written with the first packet
            self._container.metadata[key] = value

    # -- public ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, frames) -> int:
        """Encode one clip; return how many of its frames were kept."""
        if self._closed:
            raise RuntimeError("VideoWriter is closed")
        frames = _check_clip(frames)
        count, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
        if count == 0:
            return 0
        if self._video_stream is None:
            self._open_streams(width, height)
        elif (width, height) != (self.width, self.height):
            raise ValueError(
                f"clip is {width}x{height} but the video is {self.width}x{self.height}; all clips must match"
            )
        keep = count if self.max_frames is None else max(0, min(count, self.max_frames - self.frames_written))
        for i in range(keep):
            picture = av.VideoFrame.from_ndarray(frame_to_uint8(frames[i]), format="rgb24")
            picture.pts = self.frames_written
            self._mux(self._video_stream.encode(picture))
            self.frames_written += 1
        self.frames_dropped += count - keep
        self._feed_audio(final=False)
        return keep

    def close(self) -> None:
        """Flush encoders and move the finished file to ``path``."""
        if self._closed:
            return
        try:
            if self.frames_written == 0:
                raise ValueError("no frames were written; refusing to create an empty video")
            self._mux(self._video_stream.encode(None))
            if self._audio_stream is not None:
                self._feed_audio(final=True)
                self._mux(self._audio_stream.encode(None))
            self._container.close()
            self._closed = True
            os.replace(self._tmp_path, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop and delete the partial file; ``path`` is left untouched."""
        was_open = not self._closed
        self._closed = True
        if was_open:
            try:
                self._container.close()
            except Exception:
                pass
        self._remove_tmp()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.abort()
            except Exception:
                pass

    # -- internals ------------------------------------------------------------

    def _open_streams(self, width: int, height: int) -> None:
        if width % 2 or height % 2 or width < 2 or height < 2:
            raise ValueError(
                f"H.264 yuv420p needs even width and height, got {width}x{height}; crop or pad the frames"
            )
        try:
            video = self._container.add_stream("libx264", rate=self.fps)
        except Exception as exc:
            raise RuntimeError(f"this PyAV build cannot encode H.264 (libx264): {exc}") from exc
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": f"{self._crf:g}", "preset": self._preset}
        self._video_stream = video
        self.width, self.height = width, height
        if self._audio is not None:
            audio = self._container.add_stream("aac", rate=self._audio_rate)
            audio.layout = "stereo" if self._audio.shape[0] == 2 else "mono"
            audio.bit_rate = self._audio_bitrate
            self._audio_stream = audio

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)

    def _feed_audio(self, final: bool) -> None:
        """Encode audio up to where the written video ends (whole blocks until final)."""
        if self._audio_stream is None:
            return
        total = self._audio.shape[1]
        end = min(total, int(Fraction(self.frames_written) * self._audio_rate / self.fps))
        layout = self._audio_stream.layout.name
        while self._audio_pos < end:
            stop = min(self._audio_pos + _AUDIO_BLOCK, end)
            if stop - self._audio_pos < _AUDIO_BLOCK and not final:
                break
            block = np.ascontiguousarray(self._audio[:, self._audio_pos : stop])
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
            frame.sample_rate = self._audio_rate
            frame.pts = self._audio_pos
            frame.time_base = Fraction(1, self._audio_rate)
            self._mux(self._audio_stream.encode(frame))
            self._audio_pos = stop

    def _remove_tmp(self) -> None:
        try:
            os.remove(self._tmp_path)
        except FileNotFoundError:
            pass


def _metadata_tags(metadata) -> dict[str, str]:
    """``{key: value}`` -> ``{key: JSON text}``, checked before any file is created."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    tags = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or any(ch in key for ch in "=\0"):
            raise ValueError(f"metadata key must be a non-empty string without '=' or NUL, got {key!r}")
        try:
            tags[key] = json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata[{key!r}] is not JSON-serialisable: {exc}") from exc
    return tags


def write_video(path, frames, fps, audio=None, **options) -> int:
    """Write a whole video: ``frames`` is one clip ``[F, H, W, 3]`` or an iterable of clips.

    Returns the number of frames in the file. ``options`` go to :class:`VideoWriter`.
    """
    with VideoWriter(path, fps, audio, **options) as writer:
        if hasattr(frames, "shape"):
            writer.write(frames)
        else:
            for clip in frames:
                writer.write(clip)
    return writer.frames_written


def open_video(path: str | os.PathLike):
    """An open PyAV container of the video file at `path` (its first video stream is checked);
    a missing file, an unreadable one or one without video is a clear error."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such video file: {path}")
    try:
        container = av.open(path)
    except av.FFmpegError as exc:
        raise ValueError(f"{path} is not a readable media file: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} has no video stream")
    return container


def read_video_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The container tags of a video file as stored (JSON text for what :class:`VideoWriter` wrote)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such video file: {path}")
    try:
        with av.open(path) as container:
            return dict(container.metadata)
    except av.FFmpegError as exc:
        raise ValueError(f"{path} is not a readable media file: {exc}") from exc


def read_video_info(path: str | os.PathLike) -> dict:
    """Frame count, size, frame rate and audio facts of a video file (PyAV)."""
    with open_video(path) as container:
        video = container.streams.video[0]
        rate = video.average_rate or video.guessed_rate
        frames = video.frames
        info = {
            "width": video.codec_context.width,
            "height": video.codec_context.height,
            "fps": float(rate) if rate else None,
            "fps_fraction": Fraction(rate) if rate else None,
            "video_codec": video.codec_context.name,
            "pix_fmt": video.codec_context.pix_fmt,
            "audio_duration": None,
            "audio_sample_rate": None,
            "audio_channels": None,
            "audio_codec": None,
        }
        if container.streams.audio:
            audio = container.streams.audio[0]
            info["audio_sample_rate"] = audio.codec_context.sample_rate
            info["audio_channels"] = audio.codec_context.layout.nb_channels
            info["audio_codec"] = audio.codec_context.name
            if audio.duration is not None:
                info["audio_duration"] = float(audio.duration * audio.time_base)
            else:
                samples = sum(f.samples for f in container.decode(audio))
                info["audio_duration"] = samples / audio.codec_context.sample_rate
        if not frames:
            container.seek(0)
            frames = sum(1 for p in container.demux(video) if p.size)
        info["frames"] = frames
        info["duration"] = float(frames / rate) if rate else None
    return info
