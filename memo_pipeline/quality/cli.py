"""`python -m memo_pipeline report VIDEO --reference IMG [--json OUT] [--plot OUT.png] [--overwrite]`.

Every output is checked before the (long) analysis starts: never an input (also through a symlink
or a hard link), never a folder, a writable place, and an existing file only with --overwrite.

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
import os
import sys
from pathlib import Path

from ..file_paths import same_file
from ..settings import num_clips

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
    rep.add_argument("--overwrite", action="store_true", help="replace existing --json / --plot files (never an input)")
    return rep


def _writable_folder(path: Path) -> str | None:
    """Why a file cannot be created at `path` (its folder, made if missing), or None."""
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():
            return f"its folder {parent} is a broken symlink"
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the folder {parent} is not writable"
    return None


def check_report_outputs(args) -> None:
    """Refuse, before any analysis, outputs that would replace an input, are folders, cannot be
    written, or (without --overwrite) already exist: a report must never cost the video it judges."""
    from PIL import Image

    outputs = {name: path for name, path in (("--json", args.json), ("--plot", args.plot)) if path is not None}
    if len(outputs) == 2 and same_file(args.json, args.plot):
        raise ValueError(f"--json and --plot are the same file ({args.json}); give them different names")
    inputs = {"VIDEO": args.video, "--reference": args.reference, "--audio": args.audio,
              "--face-models": args.face_models, "--checkpoint": args.checkpoint, "--emotion2vec": args.emotion2vec}
    for out_name, out in outputs.items():
        for in_name, source in inputs.items():
            if source is None:
                continue
            # a new file inside an input folder harms nothing; replacing one of its files would
            inside = source.is_dir() and out.exists() and out.resolve().is_relative_to(source.resolve())
            if same_file(out, source) or inside:
                where = "lies inside" if inside and not same_file(out, source) else "is"
                raise ValueError(f"{out_name} {out} {where} the input {in_name} {source}; writing it would destroy "
                                 "the input: choose another output path")
        if out.is_dir():
            raise ValueError(f"{out_name} {out} is a folder; give a file name")
        if out.exists() and not args.overwrite:
            raise ValueError(f"{out_name} {out} already exists; pass --overwrite to replace it")
        problem = _writable_folder(out)
        if problem:
            raise ValueError(f"cannot write {out_name} {out}: {problem}")
    if args.plot is not None:
        Image.init()
        if args.plot.suffix.lower() not in Image.registered_extensions():
            raise ValueError(f"--plot {args.plot}: unknown picture type {args.plot.suffix or '(no suffix)'!r}; "
                             "use a .png (or .jpg, .webp) name")


def check_report_numbers(args) -> None:
    if args.frames_per_clip < 1 or args.identity_every < 1:
        raise ValueError("--frames-per-clip and --identity-every must be at least 1")
    if args.max_lag is not None and args.max_lag < 0:
        raise ValueError(f"--max-lag is the largest lag searched either way, in frames; it cannot be negative "
                         f"(got {args.max_lag})")


def _write_atomically(path: Path, write) -> None:
    """`write(temp_path)` next to `path`, then rename over it: a failed write leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.{os.getpid()}.part{path.suffix}")
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


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

    padded = num_clips(frames, args.frames_per_clip) * args.frames_per_clip
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
    from ..video_io import read_video_info
    from . import analyze_video, file_speech_envelope, render_report, video_frame_rate

    check_report_numbers(args)
    check_report_outputs(args)
    frames = read_video_info(args.video)["frames"]
    if args.max_lag is not None and frames and args.max_lag >= frames:
        raise ValueError(f"--max-lag {args.max_lag} is not shorter than the video ({frames} frames); "
                         f"give at most {max(frames - 1, 0)} (default: 1 s)")
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
    if args.emotion2vec is not None and audio is None:
        raise ValueError("--emotion2vec needs audio: the video has no audio track; pass --audio")
    labels, emotion_source = _emotion_labels(args, source, frames, fps)
    report = analyze_video(args.video, analyzer, reference, audio=audio, emotion_labels=labels,
                           emotion_source=emotion_source, frames_per_clip=args.frames_per_clip,
                           identity_every=args.identity_every, max_lag=args.max_lag, fps=fps,
                           allow_faceless_reference=True)
    if report.reference_face is None:
        report.notes.append(f"no face found in the reference {args.reference}: identity NOT scored (is it the "
                            "portrait the video was made from?)")
        print(f"warning: no face found in the reference image {args.reference}: the identity part is NOT scored; "
              "the sync proxy and the emotion timeline are still reported", file=sys.stderr)
    if audio is None:
        report.notes.append("the video has no audio track and no --audio was given: no sync proxy")
    if labels is None:
        report.notes.append("no emotion source: pass --emotion (the schedule used) or --emotion2vec + --checkpoint")
    print(report.text())
    if args.json is not None:
        text = json.dumps(report.to_dict(series=True), indent=1) + "\n"
        _write_atomically(args.json, lambda temp: temp.write_text(text))
        print(f"wrote {args.json}")
    if args.plot is not None:
        image = render_report(report)
        _write_atomically(args.plot, lambda temp: image.save(temp))
        print(f"wrote {args.plot}")
    return 0


def main_report(args) -> int:
    try:
        return run_report(args)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # unreadable input, disk full while writing: one line, nothing half-written
        where = f" {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}{':' if where else ''}{where}", file=sys.stderr)
        return 2
