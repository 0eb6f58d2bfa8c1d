"""Quality report of a generated talking video, without watching it: identity, sync proxy, emotions.

* identity consistency: ArcFace cosine of each frame's face to the reference face (``identity.py``);
* audio-visual sync PROXY: mouth-region motion energy vs speech-energy flux, cross-correlated over
  lags (``sync.py``; a proxy, not SyncNet);
* emotion timeline: the per-frame labels used for generation as segments (``emotion_timeline.py``).

``QualityReporter`` streams frames clip by clip (``report.py``); ``analyze_video`` runs it over a
video file; ``render_report`` draws the result with PIL (``plot.py``). No ComfyUI import.
"""

from __future__ import annotations

import os

from .emotion_timeline import (
    EmotionSegment,
    clip_conditioning,
    emotion_segments,
    emotion_timeline,
    segments_to_frame_labels,
    segments_to_schedule,
)
from .identity import cosine_similarity, linear_drift, reference_embedding
from .plot import render_report, report_image_array
from .report import QualityReport, QualityReporter
from .sync import (
    SpeechEnvelope,
    SyncProxyResult,
    envelope_flux,
    file_speech_envelope,
    lagged_correlation,
    mouth_box_matrix,
    mouth_patch,
    speech_envelope,
    sync_proxy,
)
from .video_source import iter_video_chunks, video_frame_rate


def analyze_video(path: str | os.PathLike, analyzer, reference_image, *, audio=None, emotion_labels=None,
                  emotion_source: str = "", frames_per_clip: int = 16, identity_every: int = 1,
                  max_lag: int | None = None, fps: float | None = None, on_chunk=None,
                  allow_faceless_reference: bool = False) -> QualityReport:
    """Report on a video file, decoded one clip at a time.

    ``audio`` is (samples, rate) or a ``SpeechEnvelope``; by default the file's own audio track is
    used, decoded block by block (none: no sync proxy). ``fps`` defaults to the file's frame rate.
    ``on_chunk(frames_done)`` is called after every clip (progress, cancel). A reference without a
    face is an error unless ``allow_faceless_reference`` (then identity is not scored, and says so).
    """
    from ..audio.io import AudioLoadError

    rate = video_frame_rate(path) if fps is None else float(fps)
    reporter = QualityReporter(analyzer, reference_image, rate, frames_per_clip, identity_every,
                               allow_faceless_reference)
    notes = []
    if audio is None:
        try:
            audio = file_speech_envelope(path, rate)
        except AudioLoadError as exc:
            notes.append(f"no sync proxy: {exc}")
    for chunk in iter_video_chunks(path, frames_per_clip):
        reporter.add_frames(chunk)
        if on_chunk is not None:
            on_chunk(reporter.frames)
    report = reporter.finish(audio, emotion_labels, emotion_source, max_lag)
    report.notes.extend(notes)
    return report


__all__ = [
    "EmotionSegment",
    "QualityReport",
    "QualityReporter",
    "SpeechEnvelope",
    "SyncProxyResult",
    "analyze_video",
    "clip_conditioning",
    "cosine_similarity",
    "emotion_segments",
    "emotion_timeline",
    "envelope_flux",
    "file_speech_envelope",
    "iter_video_chunks",
    "lagged_correlation",
    "linear_drift",
    "mouth_box_matrix",
    "mouth_patch",
    "reference_embedding",
    "render_report",
    "report_image_array",
    "segments_to_frame_labels",
    "segments_to_schedule",
    "speech_envelope",
    "sync_proxy",
    "video_frame_rate",
]
