"""MEMO Quality Report: identity consistency, audio-visual sync proxy and emotion timeline of a video."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from . import host as host_mod
from ..memo_pipeline.settings import num_clips
from .common import CATEGORY, check_setting, comfy_audio, logger, single_image, user_errors
from .memo_types import MEMO_EMOTION, MEMO_FACE_MODEL, MemoEmotion, MemoFaceModel, expect

CATEGORY_QUALITY = f"{CATEGORY}/quality"


@dataclass
class _TrackTiming:
    """What `MemoEmotion.frame_labels` reads from a MEMO audio: the track's length and frame grid."""

    fps: float
    duration_s: float
    frames_per_clip: int

    @property
    def num_frames(self) -> int:
        return max(1, math.ceil(self.duration_s * self.fps - 1e-9))

    @property
    def padded_frames(self) -> int:
        return num_clips(self.num_frames, self.frames_per_clip) * self.frames_per_clip


class MemoQualityReport:
    """The work of MEMO Quality Report; its inputs and outputs are declared in comfy_nodes.py."""

    def report(self, face_model, reference_image, audio, fps=30.0, frames_per_clip=16, identity_every=1,
               images=None, video_path="", emotion=None):
        from ..memo_pipeline.quality import QualityReporter, iter_video_chunks, report_image_array, video_frame_rate
        from ..memo_pipeline.video_io import read_video_info

        model = expect(face_model, MemoFaceModel, "face_model", MEMO_FACE_MODEL)
        if not model.can_embed:
            raise ValueError(f"input 'face_model': '{model.name}' has no identity network; the report needs "
                             "scrfd_10g_bnkps.onnx + glintr100.onnx")
        fps = check_setting(fps, "fps")
        frames_per_clip = check_setting(frames_per_clip, "frames_per_clip")
        identity_every = int(identity_every)
        if identity_every < 1:
            raise ValueError(f"input 'identity_every' must be >= 1, got {identity_every}")
        path = (video_path or "").strip() if isinstance(video_path, str) else video_path
        if (images is None) == (not path):
            raise ValueError("connect either 'images' or 'video_path' (one of them, not both)")
        if images is not None and (not torch.is_tensor(images) or images.dim() != 4):
            raise ValueError(f"input 'images' must be an IMAGE batch [N, H, W, C], got {getattr(images, 'shape', type(images))}")
        reference = single_image(reference_image, "reference_image")
        waveform, rate = comfy_audio(audio, "audio")
        notes = []
        total = images.shape[0] if images is not None else 0
        if path:
            if not os.path.isfile(path):
                raise ValueError(f"input 'video_path': no such file: {path}")
            with user_errors("video_path"):
                file_fps = video_frame_rate(path)
                total = read_video_info(path)["frames"]
            if abs(file_fps - float(fps)) > 1e-2:
                notes.append(f"the video file runs at {file_fps:g} fps; that rate is used, not the fps input ({fps:g})")
            fps = file_fps

        host = host_mod.get_host()
        with user_errors("reference_image"):
            reporter = QualityReporter(model.analyzer, reference.numpy(), float(fps), frames_per_clip, identity_every)
        bar = host.progress(max(1, total))
        chunks = iter_video_chunks(path, frames_per_clip) if path else images.split(frames_per_clip)
        with user_errors("video_path" if path else "images"):
            for chunk in chunks:
                host.check_interrupt()
                reporter.add_frames(chunk)
                bar.set(reporter.frames)

        labels, source = None, ""
        if emotion is not None:
            track = expect(emotion, MemoEmotion, "emotion", MEMO_EMOTION)
            timing = _TrackTiming(float(fps), waveform.shape[1] / rate, frames_per_clip)
            with user_errors("emotion"):
                labels = track.frame_labels(timing)  # type: ignore[arg-type] - reads fps, duration, padded frames
            source = track.kind
        report = reporter.finish((waveform.numpy(), rate), labels, source)
        report.notes.extend(notes)
        if emotion is None:
            report.notes.append("no emotion input: no emotion timeline")
        logger.info("MEMO quality report:\n%s", report.text())
        plot = torch.from_numpy(report_image_array(report))[None].contiguous()
        summary = report.to_json(series=False)
        return {"ui": {"text": [report.text()]}, "result": (plot, summary)}


IMPLEMENTATIONS = {  # node id -> (class doing the work, its method); nodes/comfy_nodes.py declares them
    "MemoQualityReport": (MemoQualityReport, "report"),
}
