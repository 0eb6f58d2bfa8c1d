"""`python -m memo_pipeline report VIDEO --reference IMG [--json OUT] [--plot OUT.png]`.

Face models are found the way `generate` finds them: ``--face-models DIR``, else the MEMO
checkpoint given with ``--checkpoint`` (its ``misc/face_analysis/models/``), else
``models/memo/memo`` below the current folder (the layout the README uses). The audio is the
video's own track unless ``--audio`` names another file. The emotion timeline comes from
``--emotion`` (the schedule that was given to generate) or is detected again from the audio with
``--emotion2vec`` and the checkpoint's emotion classifier, as generate does.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

DEFAULT_MODELS = Path("models") / "memo" / "memo"
logger = logging.getLogger("memo_pipeline")


def add_report_parser(sub) -> argparse.ArgumentParser:
    rep = sub.add_parser("report", help="quality report of a generated video: identity, sync proxy, emotion timeline")
    rep.add_argument("video", type=Path, help="the generated video (mp4 from generate / MEMO Generate To File)")
    rep.add_argument("--reference", type=Path, required=True, help="the portrait the video was made from")
    rep.add_argument("--json", type=Path, help="write the full report (with per-frame series) as JSON here")
    rep.add_argument("--plot", type=Path, help="write the report plot (PNG) here")
    rep.add_argument("--face-models", type=Path, help="folder with scrfd_10g_bnkps.onnx and glintr100.onnx")
    rep.add_argument("--checkpoint", type=Path, help=f"MEMO checkpoint folder (face models, emotion classifier); "
                     f"default for the face models: ./{DEFAULT_MODELS}")
    rep.add_argument("--audio", type=Path, help="audio to compare the mouth with (default: the video's own track)")
    rep.add_argument("--emotion", help="the emotion label or schedule used for generation ('0:neutral, 3.5:happy')")
    rep.add_argument("--emotion2vec", type=Path, help="emotion2vec_plus_large checkpoint: detect the emotions again "
                     "from the audio (needs --checkpoint for MEMO's classifier)")
    rep.add_argument("--frames-per-clip", type=int, default=16, help="clip length used for generation (16)")
    rep.add_argument("--identity-every", type=int, default=1, help="score the identity on every n-th frame only")
    rep.add_argument("--max-lag", type=int, help="largest lag searched by the sync proxy, in frames (default: 1 s)")
    rep.add_argument("--device", default="auto", choices=["auto", "cpu"], help="onnxruntime: CUDA when available, or CPU")
    return rep


def _face_analyzer(args):
    from ..face import FaceAnalyzer, find_face_models

    if args.face_models is not None:
        root, how = args.face_models, "--face-models"
    elif args.checkpoint is not None:
        root, how = args.checkpoint, "--checkpoint"
    else:
        root, how = DEFAULT_MODELS, "the default"
    detector, recognizer = find_face_models(root)
    if detector is None or recognizer is None:
        raise ValueError(f"no face models (scrfd_10g_bnkps.onnx and glintr100.onnx) under {root} ({how}; also "
                         "looked in models/, face_analysis/models/ and misc/face_analysis/models/ below it); "
                         "pass --face-models DIR or --checkpoint DIR")
    providers = ["CPUExecutionProvider"] if args.device == "cpu" else None
    return FaceAnalyzer(detector, recognizer, providers=providers)


def _emotion_labels(args, audio_path, frames: int, fps: float):
    """(per-frame labels over whole clips, source text) or (None, "")."""
    import warnings

    import torch

    padded = math.ceil(frames / args.frames_per_clip) * args.frames_per_clip
    if args.emotion:
        from ..audio.emotions import schedule_frame_labels

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # late entries simply do not show in the timeline
            return schedule_frame_labels(args.emotion, padded, fps), f"schedule '{args.emotion}'"
    if args.emotion2vec is not None:
        from ..audio.emotion2vec import Emotion2Vec
        from ..audio.emotion_detect import detect_emotions
        from ..loading import COMPONENTS, load_component

        if args.checkpoint is None:
            raise ValueError("--emotion2vec needs --checkpoint (MEMO's misc/audio_emotion_classifier)")
        from ..audio.io import load_audio

        samples = load_audio(audio_path).samples  # 16 kHz mono, as for generation
        sub, cls, _ = COMPONENTS["emotion_classifier"]
        classifier = load_component(args.checkpoint / sub, cls)
        backbone = Emotion2Vec.from_checkpoint(args.emotion2vec)
        with torch.no_grad():
            labels = detect_emotions(samples, padded, backbone, classifier.float())
        return labels, "detected (emotion2vec + MEMO classifier) from the audio"
    return None, ""


def run_report(args) -> int:
    from ..audio.io import AudioLoadError
    from ..face.image import load_image
    from . import analyze_video, file_speech_envelope, render_report, video_frame_rate

    if args.frames_per_clip < 1 or args.identity_every < 1:
        raise ValueError("--frames-per-clip and --identity-every must be at least 1")
    analyzer = _face_analyzer(args)
    reference = load_image(args.reference)
    fps = video_frame_rate(args.video)
    source = args.audio if args.audio is not None else args.video
    if args.audio is not None and not args.audio.is_file():
        raise FileNotFoundError(f"audio file not found: {args.audio}")
    try:
        audio = file_speech_envelope(source, fps)  # decoded block by block
    except AudioLoadError as exc:
        if args.audio is not None:
            raise
        logger.warning("no sync proxy: %s", exc)
        audio = None
    from ..video_io import read_video_info

    frames = read_video_info(args.video)["frames"]
    if args.emotion2vec is not None and audio is None:
        raise ValueError("--emotion2vec needs audio: the video has no audio track; pass --audio")
    labels, emotion_source = _emotion_labels(args, source, frames, fps)
    report = analyze_video(args.video, analyzer, reference, audio=audio, emotion_labels=labels,
                           emotion_source=emotion_source, frames_per_clip=args.frames_per_clip,
                           identity_every=args.identity_every, max_lag=args.max_lag, fps=fps)
    if audio is None:
        report.notes.append("the video has no audio track and no --audio was given: no sync proxy")
    if labels is None:
        report.notes.append("no emotion source: pass --emotion (the schedule used) or --emotion2vec + --checkpoint")
    print(report.text())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(series=True), indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        render_report(report).save(args.plot)
        print(f"wrote {args.plot}")
    return 0


def main_report(args) -> int:
    try:
        return run_report(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
