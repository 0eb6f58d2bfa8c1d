"""Command line: `python -m memo_pipeline generate ...` and `python -m memo_pipeline demo --out OUT.mp4`.

`generate` streams the video to an H.264 mp4 clip by clip (with the input audio muxed in), so
memory does not grow with the length of the audio. `demo` writes tiny random-weight checkpoints,
a test portrait and a test tone into a temporary folder and runs the same chain on them.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio.emotions import EMOTION_LABELS, emotion_index, schedule_frame_labels
from .audio.features import Wav2Vec2AudioEncoder, extract_audio_features
from .audio.io import load_audio
from .face.image import load_image
from .face.resize import resize_frames
from .loading import MemoModels, resolve_dtype
from .pipeline import GenerationSettings, MemoPipeline, clip_emotion, reference_pixels
from .vae import DiffusersVAE
from .video_io import VideoWriter, read_video_info

logger = logging.getLogger("memo_pipeline")
MUX_SAMPLE_RATE = 48000


@dataclass
class Job:
    checkpoint: Path
    vae: Path
    wav2vec: Path
    image: Path
    audio: Path
    out: Path
    settings: GenerationSettings
    resolution: int = 512
    emotion: str | None = None
    emotion2vec: Path | None = None
    face_models: Path | None = None
    crop: bool = False
    crop_scale: float | None = None
    allow_no_face: bool = False
    dtype: str = "fp32"
    device: str = "cpu"
    vae_batch_size: int = 8
    save_state: Path | None = None
    progress: bool = True


def _reference_image(job: Job) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Square reference image in [-1, 1] and the ArcFace embedding (None = zeros)."""
    from .face import FaceAnalyzer, crop_face, find_face_models

    image = load_image(job.image)
    face_root = job.face_models or job.checkpoint
    detector, recognizer = find_face_models(face_root)
    embedding = None
    face = None
    if recognizer is None:
        if not job.allow_no_face:
            raise SystemExit(
                f"error: no face models (scrfd_10g_bnkps.onnx, glintr100.onnx) under {face_root}/misc/face_analysis/models; "
                "pass --face-models DIR, or --allow-no-face to use a zero identity embedding (MEMO's no-face fallback)"
            )
        logger.warning("no face models: using a zero identity embedding")
    else:
        analyzer = FaceAnalyzer(detector, recognizer)
        emb, face = analyzer.identity(image, allow_missing_face=job.allow_no_face, name=str(job.image))
        embedding = torch.from_numpy(np.asarray(emb, dtype=np.float32))
    if job.crop:
        if face is None:
            raise SystemExit("error: --crop needs a detected face")
        kwargs = {"scale": job.crop_scale} if job.crop_scale else {}
        square, _ = crop_face(image, face, resolution=job.resolution, **kwargs)
        square = torch.from_numpy(square)
    else:  # the official preprocessing: the whole picture resized to a square
        square = resize_frames(torch.from_numpy(image)[None], job.resolution, job.resolution)[0]
    return reference_pixels(square), embedding


def _emotion_labels(job: Job, models: MemoModels, samples: np.ndarray, frames: int) -> torch.Tensor | None:
    if job.emotion:
        return schedule_frame_labels(job.emotion, frames, job.settings.fps)
    if job.emotion2vec is not None:
        from .audio.emotion2vec import Emotion2Vec
        from .audio.emotion_detect import detect_emotions

        if models.emotion_classifier is None:
            raise SystemExit("error: emotion detection needs misc/audio_emotion_classifier in the checkpoint")
        backbone = Emotion2Vec.from_checkpoint(job.emotion2vec)
        labels = detect_emotions(samples, frames, backbone, models.emotion_classifier.float())
        per_clip = [EMOTION_LABELS[clip_emotion(chunk)] for chunk in labels.split(job.settings.frames_per_clip)]
        logger.info("detected emotion per clip: %s", ", ".join(per_clip))
        return labels
    logger.info("no --emotion or --emotion2vec: using 'neutral' for every clip")
    return torch.full((frames,), emotion_index("neutral"), dtype=torch.long)


def run(job: Job) -> dict:
    started = time.perf_counter()
    dtype = resolve_dtype(job.dtype)
    models = MemoModels.load(job.checkpoint, dtype=dtype, device=job.device)
    vae = DiffusersVAE.from_pretrained(job.vae, device=job.device, dtype=dtype, batch_size=job.vae_batch_size)
    encoder = Wav2Vec2AudioEncoder.from_pretrained(job.wav2vec, device=job.device)
    pixels, face_embedding = _reference_image(job)

    clip16k = load_audio(job.audio)
    features = extract_audio_features(encoder, clip16k, fps=job.settings.fps, frames_per_clip=job.settings.frames_per_clip)
    labels = _emotion_labels(job, models, clip16k.samples, features.padded_frames)
    mux = load_audio(job.audio, target_rate=MUX_SAMPLE_RATE)

    pipeline = MemoPipeline(models, vae)
    bar = _progress(pipeline.total_steps(features, job.settings), job.progress)
    job.out.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(job.out, job.settings.fps, audio=(mux.samples, MUX_SAMPLE_RATE)) as writer:
        for clip in pipeline.generate(pixels, face_embedding, features, labels, job.settings,
                                      on_step=lambda info: bar.update(1)):
            writer.write(clip.frames.permute(0, 2, 3, 1))
            if job.save_state:
                clip.state.save(job.save_state)
    bar.close()
    info = read_video_info(job.out)
    info["seconds"] = time.perf_counter() - started
    return info


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="MEMO", unit="step", disable=not enabled)


def make_test_portrait(path: Path, size: int = 256) -> Path:
    """A drawn face-like picture (no real person), for the demo."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (70, 110, 160))
    draw = ImageDraw.Draw(image)
    s = size / 256
    draw.ellipse([64 * s, 40 * s, 192 * s, 200 * s], fill=(224, 182, 150))
    draw.pieslice([60 * s, 28 * s, 196 * s, 120 * s], 180, 360, fill=(60, 40, 30))
    for x in (100, 156):
        draw.ellipse([(x - 10) * s, 100 * s, (x + 10) * s, 114 * s], fill=(255, 255, 255))
        draw.ellipse([(x - 4) * s, 103 * s, (x + 4) * s, 111 * s], fill=(40, 30, 20))
    draw.line([128 * s, 112 * s, 122 * s, 140 * s, 132 * s, 142 * s], fill=(170, 120, 100), width=max(1, int(3 * s)))
    draw.arc([104 * s, 150 * s, 152 * s, 175 * s], 10, 170, fill=(150, 50, 60), width=max(1, int(4 * s)))
    image.save(path)
    return path


def make_test_tone(path: Path, seconds: float, sample_rate: int = 16000) -> Path:
    """A speech-like test signal: a gliding harmonic tone with syllable-rate amplitude modulation."""
    from scipy.io import wavfile

    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    wavfile.write(path, sample_rate, (0.2 * voice * syllables).astype(np.float32))
    return path


def demo(out: Path, seconds: float = 2.0, resolution: int = 64, steps: int = 3, seed: int = 42, progress: bool = True) -> dict:
    from .tiny import write_tiny_bundle

    with tempfile.TemporaryDirectory(prefix="memo-demo-") as tmp:
        tmp = Path(tmp)
        paths = write_tiny_bundle(tmp / "models", seed)
        job = Job(
            checkpoint=paths["memo"], vae=paths["vae"], wav2vec=paths["wav2vec2"],
            image=make_test_portrait(tmp / "portrait.png"), audio=make_test_tone(tmp / "tone.wav", seconds), out=out,
            settings=GenerationSettings(steps=steps, seed=seed, frames_per_clip=16, past_frames=16, init_past_frames=16),
            resolution=resolution, emotion2vec=paths["emotion2vec"], allow_no_face=True, progress=progress,
        )
        return run(job)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m memo_pipeline", description="MEMO talking-video generation")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="portrait + audio -> talking video (mp4)")
    gen.add_argument("--checkpoint", type=Path, required=True, help="MEMO folder (reference_net/, diffusion_net/, ...)")
    gen.add_argument("--vae", type=Path, required=True, help="sd-vae-ft-mse: diffusers folder or single .safetensors")
    gen.add_argument("--wav2vec", type=Path, required=True, help="wav2vec2-base-960h folder or single .safetensors")
    gen.add_argument("--image", type=Path, required=True)
    gen.add_argument("--audio", type=Path, required=True)
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--cfg", type=float, default=3.5, help="guidance scale; <= 1 runs a single conditional pass")
    gen.add_argument("--fps", type=float, default=30.0)
    gen.add_argument("--frames-per-clip", type=int, default=16)
    gen.add_argument("--past-frames", type=int, default=16)
    gen.add_argument("--resolution", type=int, default=512)
    gen.add_argument("--emotion", help="a label (e.g. happy) or a schedule '0:neutral, 3.5:happy' (seconds; 48f = frames)")
    gen.add_argument("--emotion2vec", type=Path, help="emotion2vec_plus_large checkpoint: detect emotions from the audio")
    gen.add_argument("--face-models", type=Path, help="folder with scrfd_10g_bnkps.onnx and glintr100.onnx (default: the checkpoint)")
    gen.add_argument("--crop", action="store_true", help="crop a square around the face instead of resizing the whole image")
    gen.add_argument("--crop-scale", type=float, help="crop size relative to the face box")
    gen.add_argument("--allow-no-face", action="store_true", help="use a zero identity embedding when no face/face model is found")
    gen.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    gen.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    gen.add_argument("--vae-batch", type=int, default=8, help="frames per VAE call (1 = exactly the official per-frame calls)")
    gen.add_argument("--save-state", type=Path, help="after every clip, save the motion memory + past frames here")
    gen.add_argument("--no-progress", action="store_true")

    dem = sub.add_parser("demo", help="full chain on tiny random weights and a generated portrait/tone")
    dem.add_argument("--out", type=Path, required=True)
    dem.add_argument("--seconds", type=float, default=2.0)
    dem.add_argument("--resolution", type=int, default=64)
    dem.add_argument("--steps", type=int, default=3)
    dem.add_argument("--seed", type=int, default=42)
    dem.add_argument("--no-progress", action="store_true")

    from .quality.cli import add_report_parser

    add_report_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.command == "report":
        from .quality.cli import main_report

        return main_report(args)
    try:
        if args.command == "demo":
            info = demo(args.out, args.seconds, args.resolution, args.steps, args.seed, not args.no_progress)
        else:
            settings = GenerationSettings(steps=args.steps, guidance_scale=args.cfg, frames_per_clip=args.frames_per_clip,
                                          past_frames=args.past_frames, init_past_frames=args.past_frames, seed=args.seed,
                                          fps=args.fps)
            info = run(Job(args.checkpoint, args.vae, args.wav2vec, args.image, args.audio, args.out, settings,
                           resolution=args.resolution, emotion=args.emotion, emotion2vec=args.emotion2vec,
                           face_models=args.face_models, crop=args.crop, crop_scale=args.crop_scale,
                           allow_no_face=args.allow_no_face, dtype=args.dtype, device=args.device,
                           vae_batch_size=args.vae_batch, save_state=args.save_state, progress=not args.no_progress))
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out
    print(f"wrote {out}: {info['frames']} frames {info['width']}x{info['height']} at {float(info['fps']):g} fps, "
          f"audio {info['audio_duration']:.2f} s, in {info['seconds']:.1f} s")
    return 0 if info["frames"] > 0 and not math.isnan(info["seconds"]) else 1
