"""The objects that travel between MEMO nodes, and their ComfyUI type names.

ComfyUI's own types (IMAGE, AUDIO, VAE, ...) are used exactly as ComfyUI defines them; every
object of ours has a ``MEMO_*`` type (declared as a custom V3 type in comfy_nodes.py) so it can
never be wired into a core node by mistake.
These classes are plain data plus small checks; the work happens in ``memo_pipeline``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ..memo_pipeline.settings import num_clips

MEMO_MODEL = "MEMO_MODEL"
MEMO_AUDIO_ENCODER = "MEMO_AUDIO_ENCODER"
MEMO_AUDIO = "MEMO_AUDIO"
MEMO_EMOTION_MODEL = "MEMO_EMOTION_MODEL"
MEMO_EMOTION = "MEMO_EMOTION"
MEMO_FACE_MODEL = "MEMO_FACE_MODEL"
MEMO_FACE = "MEMO_FACE"
MEMO_CROP = "MEMO_CROP"
MEMO_STATE = "MEMO_STATE"


def expect(value: Any, cls: type, input_name: str, type_name: str) -> Any:
    """`value` if it is a `cls`, else a ValueError naming the input (API prompts can send anything)."""
    if not isinstance(value, cls):
        raise ValueError(f"input '{input_name}' must be a {type_name} (from a MEMO node), got {type(value).__name__}")
    return value


@dataclass(eq=False)
class MemoModel:
    """A loaded MEMO checkpoint (`MemoModels`) plus how it was loaded."""

    models: Any  # memo_pipeline.loading.MemoModels
    name: str
    dtype: str
    attention: str
    weight_dtype: str = "default"  # memo_pipeline.layers.WEIGHT_DTYPES name the layer weights are stored in

    def modules(self) -> list[torch.nn.Module]:
        return list(self.models.modules().values())


@dataclass(eq=False)
class MemoAudioEncoder:
    encoder: Any  # memo_pipeline.audio.features.Wav2Vec2AudioEncoder
    name: str

    def networks(self) -> list[torch.nn.Module]:
        return self.encoder.networks()

    @property
    def receptive_field(self) -> int:
        """Input samples (16 kHz) the encoder needs for one output frame."""
        return self.encoder.receptive_field


@dataclass(eq=False)
class MemoAudio:
    """wav2vec2 features of one (trimmed) track at the video frame rate, and that track.

    ``waveform``/``sample_rate`` are the trimmed input audio at its own rate, ``[channels, samples]``,
    kept so that output nodes can mux exactly the audio the video was made from. ``cut_start`` and
    ``source_samples`` say where that cut lies in the track MEMO Audio Encode was given (samples at
    ``sample_rate``), so another track of the same length (the uncut original, or the original mix
    of separated vocals) can be cut the same way (`matching_cut`).
    """

    features: Any  # memo_pipeline.audio.features.AudioFeatures
    frames_per_clip: int
    waveform: torch.Tensor
    sample_rate: int
    encoder_name: str = ""
    cut_start: int = 0
    source_samples: int | None = None  # None: the track was not cut

    @property
    def fps(self) -> float:
        return self.features.fps

    @property
    def num_frames(self) -> int:
        return self.features.num_frames

    @property
    def padded_frames(self) -> int:
        return self.features.padded_frames

    @property
    def duration_s(self) -> float:
        return self.features.duration_s

    @property
    def num_clips(self) -> int:
        return num_clips(self.num_frames, self.frames_per_clip)

    def matching_cut(self, waveform: torch.Tensor, rate: int, input_name: str) -> torch.Tensor:
        """`waveform` `[C, N]` at `rate`, cut like this audio: unchanged when it is as long as the cut
        track, cut the same way when it is as long as the uncut one, else a ValueError naming `input_name`."""
        cut_s = self.waveform.shape[-1] / self.sample_rate
        source_s = (self.source_samples or self.waveform.shape[-1]) / self.sample_rate
        start_s = self.cut_start / self.sample_rate
        given_s = waveform.shape[-1] / rate
        tolerance = 2.0 / min(rate, self.sample_rate)  # two samples: resampled copies may round differently
        if abs(given_s - cut_s) <= tolerance:
            return waveform
        if abs(given_s - source_s) <= tolerance:
            first = int(round(start_s * rate))
            return waveform[:, first:first + int(round(cut_s * rate))]
        raise ValueError(
            f"{input_name}: this track is {given_s:.2f} s long, but the MEMO audio is {cut_s:.2f} s cut from "
            f"{start_s:.2f} s of a {source_s:.2f} s track; connect that track (whole, e.g. from Load Audio, or cut: "
            f"the 'audio' output of MEMO Audio Encode), or leave '{input_name}' unconnected to use the MEMO audio's "
            "own track")

    def as_comfy_audio(self, start_frame: int = 0, stop_frame: int | None = None) -> dict:
        """The track (or the part under frames [start, stop)) as a ComfyUI AUDIO dict."""
        total = self.waveform.shape[-1]
        first = min(total, int(round(start_frame / self.fps * self.sample_rate)))
        last = total if stop_frame is None else min(total, int(round(stop_frame / self.fps * self.sample_rate)))
        return {"waveform": self.waveform[None, :, first:max(first, last)], "sample_rate": self.sample_rate}


@dataclass(eq=False)
class MemoEmotionModel:
    backbone: Any  # memo_pipeline.audio.emotion2vec.Emotion2Vec
    classifier: Any  # memo_pipeline.models.emotion_classifier.AudioEmotionClassifier
    name: str


@dataclass(eq=False)
class MemoEmotion:
    """Emotion labels over a track: detected per 16 kHz sample, or a manual schedule.

    Turned into per-frame labels for a given `MemoAudio` by `frame_labels`.
    """

    kind: str  # "detected" | "schedule"
    sample_labels: torch.Tensor | None = None  # int8 [N] at 16 kHz (detected)
    duration_s: float = 0.0  # length of the audio the labels were detected on
    schedule: str = ""  # the schedule text (schedule)
    summary: str = ""

    def frame_labels(self, audio: MemoAudio) -> torch.Tensor:
        """Per-frame labels for `audio`'s padded frames (the clip mode reads whole clips)."""
        from ..memo_pipeline.audio.emotions import frame_labels_from_sample_labels, schedule_frame_labels

        if self.kind == "schedule":
            with warnings.catch_warnings():  # late entries were reported by MEMO Emotion Schedule already
                warnings.simplefilter("ignore")
                return schedule_frame_labels(self.schedule, audio.padded_frames, audio.fps)
        if self.kind != "detected" or self.sample_labels is None:
            raise ValueError(f"emotion track of unknown kind {self.kind!r}")
        frame = 1.0 / audio.fps
        if abs(self.duration_s - audio.duration_s) > frame:
            raise ValueError(
                f"emotion: the labels were detected on {self.duration_s:.2f} s of audio but the MEMO audio is "
                f"{audio.duration_s:.2f} s long; feed the 'audio' output of MEMO Audio Encode (the trimmed track) "
                "to MEMO Emotion Detect"
            )
        # As the official pipeline: the per-sample labels are nearest-resized to the padded frame count.
        return frame_labels_from_sample_labels(self.sample_labels.long(), audio.padded_frames)


@dataclass(eq=False)
class MemoFaceModel:
    analyzer: Any  # memo_pipeline.face.FaceAnalyzer
    name: str

    @property
    def can_embed(self) -> bool:
        return self.analyzer.recognizer is not None


@dataclass(eq=False)
class MemoFace:
    """ArcFace identity embedding `(1, 512)` float32 of the reference face (zeros: no identity)."""

    embedding: torch.Tensor
    face: dict | None = None  # the detection (box, score, landmarks) as plain data
    note: str = ""


@dataclass(eq=False)
class MemoState:
    """Where a generation stopped: enough to continue it with the next clip.

    Bound to the audio it was made with (frame count, rate, clip length) and the resolution; the
    library's `GenerationState.check_compatible` (run by the sampler nodes' input check) refuses
    any other run.
    """

    state: Any  # memo_pipeline.pipeline.GenerationState
    num_frames: int
    fps: float
    frames_per_clip: int
    resolution: int
    info: dict = field(default_factory=dict)

    @property
    def next_clip(self) -> int:
        return int(self.state.next_clip)
