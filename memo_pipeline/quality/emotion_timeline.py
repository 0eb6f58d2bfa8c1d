"""Emotion timeline: per-frame emotion labels as (time, label) segments, and back.

The labels are the ones generation used (a manual schedule or the detected track, resized to
frames). MEMO conditions each clip on one label, the clip's most frequent frame label, so the
timeline also lists that per-clip label: that is what the model actually saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..audio.emotions import EMOTION_LABELS, NUM_EMOTION_CLASSES, emotion_index


@dataclass(frozen=True)
class EmotionSegment:
    start_frame: int
    end_frame: int  # exclusive
    label: int

    @property
    def name(self) -> str:
        return EMOTION_LABELS[self.label]

    def to_dict(self, fps: float) -> dict:
        return {"start_s": round(self.start_frame / fps, 4), "end_s": round(self.end_frame / fps, 4),
                "start_frame": self.start_frame, "end_frame": self.end_frame, "label": self.name}


def _labels(frame_labels) -> torch.Tensor:
    labels = torch.as_tensor(frame_labels).flatten().long()
    if labels.numel() == 0:
        raise ValueError("emotion timeline: no frame labels")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= NUM_EMOTION_CLASSES:
        raise ValueError(f"emotion timeline: labels must lie in 0..{NUM_EMOTION_CLASSES - 1}, got {low}..{high}")
    return labels


def emotion_segments(frame_labels) -> list[EmotionSegment]:
    """Runs of equal labels, in frame order."""
    labels = _labels(frame_labels)
    change = (torch.nonzero(labels[1:] != labels[:-1]).flatten() + 1).tolist()
    starts = [0] + change
    ends = change + [labels.numel()]
    return [EmotionSegment(s, e, int(labels[s])) for s, e in zip(starts, ends)]


def segments_to_frame_labels(segments: list[EmotionSegment]) -> torch.Tensor:
    """Inverse of :func:`emotion_segments` (segments must tile ``[0, end)`` in order)."""
    if not segments:
        raise ValueError("emotion timeline: no segments")
    position = 0
    parts = []
    for segment in segments:
        if segment.start_frame != position or segment.end_frame <= segment.start_frame:
            raise ValueError(f"emotion timeline: segments must be contiguous and non-empty, got {segments}")
        parts.append(torch.full((segment.end_frame - segment.start_frame,), emotion_index(segment.label), dtype=torch.long))
        position = segment.end_frame
    return torch.cat(parts)


def segments_to_schedule(segments: list[EmotionSegment]) -> str:
    """The segments as a schedule in frames (``0f:neutral, 45f:happy``), which MEMO Emotion Schedule,
    ``--emotion`` and ``schedule_frame_labels`` read back to the same labels."""
    return ", ".join(f"{s.start_frame}f:{s.name}" for s in segments)


def clip_conditioning(frame_labels, frames_per_clip: int) -> list[int]:
    """The label each clip was conditioned on: the clip's most frequent label, ties to the smallest
    (the generator's rule); a last partial clip counts only the frames it has."""
    labels = _labels(frame_labels)
    if frames_per_clip <= 0:
        raise ValueError(f"frames_per_clip must be positive, got {frames_per_clip}")
    return [int(torch.bincount(chunk, minlength=NUM_EMOTION_CLASSES).argmax()) for chunk in labels.split(frames_per_clip)]


def emotion_timeline(frame_labels, fps: float, frames_per_clip: int, source: str = "", frames: int | None = None) -> dict:
    """JSON-ready timeline: segments with times, the schedule text, and the per-clip conditioning labels.

    ``frame_labels`` may run past the video (generation pads the track to whole clips); the
    segments stop at ``frames`` (the video's length), the clip labels use the whole track as the
    generator did.
    """
    labels = _labels(frame_labels)
    segments = emotion_segments(labels if frames is None else labels[: max(1, int(frames))])
    return {
        "source": source,
        "segments": [s.to_dict(fps) for s in segments],
        "schedule": segments_to_schedule(segments),
        "clip_labels": [EMOTION_LABELS[i] for i in clip_conditioning(labels, frames_per_clip)],
    }
