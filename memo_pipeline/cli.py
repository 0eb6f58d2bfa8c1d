"""Command line: `python -m memo_pipeline generate ...` and `python -m memo_pipeline demo --out OUT.mp4`.

`generate` streams the video to an H.264 mp4 clip by clip (with the input audio muxed in), so
memory does not grow with the length of the audio. `demo` writes tiny random-weight checkpoints,
a test portrait and a test tone into a temporary folder and runs the same chain on them.
"""

from __future__ import annotations

import argparse
import contextlib
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
from .cpu_tuning import apply_cpu_tuning, tuned_allocator
from .face.image import load_image
from .layers import WEIGHT_DTYPES
from .loading import MemoModels, resolve_dtype
from .reference import REFERENCE_MODES, check_resolution, prepare_reference
from .pipeline import GenerationSettings, MemoPipeline, clip_emotion, reference_pixels
from .state import GenerationState
from .vae import TILE_OVERLAP, TILE_SIZE, TILING_MODES, DiffusersVAE
from .streaming import StopRequested, default_state_path, stop_signals, write_generation
from .video_io import read_video_info
from .offload import OFFLOAD_MODES, apply_offload, load_device
from .file_paths import same_file

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
    crop: bool = False  # the older spelling of reference_mode="face-crop"
    reference_mode: str = "resize"
    crop_scale: float | None = None
    allow_no_face: bool = False
    dtype: str = "fp32"
    weight_dtype: str = "default"  # how layer weights are stored (layers.WEIGHT_DTYPES); default: as dtype
    device: str = "cpu"
    offload: str = "none"  # offload.OFFLOAD_MODES: where weights wait while another network runs
    vae_batch_size: int | None = None
    vae_tiling: str = "auto"
    compile: bool = False
    save_state: Path | None = None
    progress: bool = True
    overwrite: bool = False
    resume: Path | None = None
    vocal_separation: str | None = "auto"  # "official" | "full-band" | None (off) | "auto" (official if present)
    memory_budget: float | None = None  # GB the run may plan to use (plan_cli.check_job); None: the free memory

    def inputs(self) -> dict[str, Path]:
        """Every path the job reads, by option name."""
        named = {"--checkpoint": self.checkpoint, "--vae": self.vae, "--wav2vec": self.wav2vec, "--image": self.image,
                 "--audio": self.audio, "--emotion2vec": self.emotion2vec, "--face-models": self.face_models}
        return {name: Path(path) for name, path in named.items() if path is not None}


class UsageError(ValueError):
    """A problem with the command line found before any model loads; one line for the user."""



def check_output_paths(job: Job) -> None:
    """Refuse outputs that would replace an input or (without `overwrite`) any existing file."""
    outputs = {"--out": job.out, "--save-state": job.save_state}
    outputs = {name: Path(path) for name, path in outputs.items() if path is not None}
    if len(outputs) == 2 and same_file(outputs["--out"], outputs["--save-state"]):
        raise UsageError(f"--out and --save-state are the same file ({job.out}); give them different names")
    for out_name, out in outputs.items():
        sources = dict(job.inputs())
        if job.resume is not None and out_name == "--out":  # --save-state may update the state it resumes
            sources["--resume"] = Path(job.resume)
        for in_name, source in sources.items():
            # a new file inside an input folder harms nothing; replacing one of its files would
            inside = source.is_dir() and out.exists() and out.resolve().is_relative_to(source.resolve())
            if same_file(out, source) or inside:
                where = "is" if not inside else "lies inside"
                raise UsageError(f"{out_name} {out} {where} the input {in_name} {source}; writing it would destroy the "
                                 "input: choose another output path")
        if out.is_dir():
            raise UsageError(f"{out_name} {out} is a folder; give a file name")
        if out.exists() and not job.overwrite:
            raise UsageError(f"{out_name} {out} already exists; pass --overwrite to replace it")


def _reference_image(job: Job) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Square reference image in [-1, 1] and the ArcFace embedding (None = zeros)."""
    from .face import FaceAnalyzer, find_face_models

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
    mode = job.reference_mode
    if job.crop and mode == "resize":
        mode = "face-crop"
    if mode == "face-crop" and face is None:
        raise SystemExit("error: --reference-mode face-crop needs a detected face")
    square = prepare_reference(image, job.resolution, mode, face=face, crop_scale=job.crop_scale, name=str(job.image))
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


def _check_input_paths(job: Job) -> None:
    """Every input exists as the kind of path it must be (one line naming the path otherwise)."""
    kinds = {"--checkpoint": "dir", "--vae": "any", "--wav2vec": "any", "--image": "file", "--audio": "file",
             "--emotion2vec": "any", "--face-models": "dir", "--resume": "file"}
    paths = {**job.inputs(), **({"--resume": Path(job.resume)} if job.resume else {})}
    for name, path in paths.items():
        if not path.exists():
            raise UsageError(f"{name} {path} does not exist")
        if kinds[name] == "dir" and not path.is_dir():
            raise UsageError(f"{name} {path} must be a folder")
        if kinds[name] == "file" and not path.is_file():
            raise UsageError(f"{name} {path} must be a file")


def _check_writable(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise UsageError(f"{what}: folder {folder} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".memo-write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"{what}: cannot write into {folder} ({err.strerror or err})") from None


def prepare_outputs(job: Job) -> None:
    """Output problems are found before any model loads: name, folders, permissions."""
    check_output_paths(job)
    if job.out.suffix.lower() != ".mp4":
        raise UsageError(f"--out {job.out}: MEMO writes an H.264 .mp4 file; give the name an .mp4 extension")
    parent = job.out.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"--out {job.out}: {parent} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {job.out}: cannot create the folder {parent} ({err.strerror or err})") from None
    _check_writable(parent, f"--out {job.out}")
    if job.save_state is not None:
        _check_writable(job.save_state.parent, f"--save-state {job.save_state}")


def _check_settings_and_emotion(job: Job, clip16k) -> None:
    from .audio.features import frame_count

    job.settings.validate()
    check_resolution(job.resolution)
    if job.emotion is not None:
        if not job.emotion.strip():
            raise UsageError("--emotion is empty; give a label (e.g. happy) or a schedule, or leave the option out "
                             "for 'neutral'")
        frames = frame_count(clip16k.num_samples, job.settings.fps)
        schedule_frame_labels(job.emotion, max(frames, 1), job.settings.fps)


VOCAL_SEPARATOR = Path("misc") / "vocal_separator" / "Kim_Vocal_2.onnx"


def vocal_mode_of(job: Job) -> str | None:
    """The vocal separation a job runs: "official", "full-band" or None ("auto" picks by the checkpoint)."""
    if job.vocal_separation == "auto":
        present = (Path(job.checkpoint) / VOCAL_SEPARATOR).is_file()
        if not present:
            logger.info("no %s in the checkpoint: features come from the whole track (no vocal separation)", VOCAL_SEPARATOR)
        return "official" if present else None
    if job.vocal_separation and not (Path(job.checkpoint) / VOCAL_SEPARATOR).is_file():
        raise UsageError(f"--vocal-separation {job.vocal_separation} needs {Path(job.checkpoint) / VOCAL_SEPARATOR}")
    return job.vocal_separation


def _vocals(job: Job, clip16k, mode: str | None):
    if mode is None:
        return clip16k
    from .audio.io import separate_vocals_like_memo
    from .audio.separation import MDXVocalSeparator

    logger.info("separating vocals with Kim_Vocal_2 (%s order)", mode)
    separator = MDXVocalSeparator(Path(job.checkpoint) / VOCAL_SEPARATOR)
    return separate_vocals_like_memo(job.audio, separator, mode, clip=clip16k)


def _refuse_replacing_the_first_part(job: Job) -> None:
    """`--resume S --out V` where V is the video S was saved from would replace the finished part
    with the rest: refused whatever the flags, naming a name to use instead."""
    try:
        made_from = GenerationState.read_metadata(job.resume).get("video_file")
    except ValueError:
        return  # an unreadable state is reported by its own check
    if made_from and same_file(Path(job.out), Path(made_from)):
        out = Path(job.out)
        suggestion = out.with_name(f"{out.stem}_rest{out.suffix}")
        raise UsageError(f"--out {job.out} is the video the state {job.resume} was saved from: writing the rest there "
                         f"would replace the part already made; give the rest another name, e.g. --out {suggestion}")


def _continue_hint(state_path: Path) -> str:
    return f"finish the video with the same command plus --resume {state_path} and another --out"


@dataclass
class LoadedModels:
    """The networks a generation needs, loaded once and reused by every job that shares them (batch)."""

    models: MemoModels
    vae: DiffusersVAE
    encoder: Wav2Vec2AudioEncoder


def load_models(job: Job) -> LoadedModels:
    """Load (and, with `job.compile`, compile) the networks named by `job`; nothing per video."""
    dtype = resolve_dtype(job.dtype)
    host = load_device(job.offload, job.device)  # the execution device unless weights wait on the host
    models = MemoModels.load(job.checkpoint, dtype=dtype, device=host, weight_dtype=job.weight_dtype)
    vae = DiffusersVAE.from_pretrained(job.vae, device=host, dtype=dtype, batch_size=job.vae_batch_size,
                                       tiling=job.vae_tiling)
    encoder = Wav2Vec2AudioEncoder.from_pretrained(job.wav2vec, device=host)
    apply_offload(job.offload, job.device, models, vae, encoder)
    if torch.device(job.device).type == "cpu":  # the command line owns its process: CPU runs are tuned
        apply_cpu_tuning(models, vae)
    if job.compile:
        from .compile import compile_diffusion_net

        compile_diffusion_net(models)
    return LoadedModels(models, vae, encoder)


@dataclass
class PreparedJob:
    """One video's inputs turned into what `MemoPipeline.generate` takes, checked against the models."""

    pipeline: MemoPipeline
    pixels: torch.Tensor
    face_embedding: torch.Tensor | None
    features: object
    labels: torch.Tensor | None
    state: GenerationState | None
    first_clip: int
    settings: GenerationSettings

    @property
    def num_clips(self) -> int:
        return self.pipeline.num_clips(self.features.num_frames, self.settings.frames_per_clip)


def prepare_job(job: Job, loaded: LoadedModels, clip16k, state: GenerationState | None, vocal_mode: str | None) -> PreparedJob:
    """The per-video part of a run on already loaded models: reference image, audio features, emotions."""
    models = loaded.models
    pixels, face_embedding = _reference_image(job)
    speech = _vocals(job, clip16k, vocal_mode)
    features = extract_audio_features(loaded.encoder, speech, fps=job.settings.fps, frames_per_clip=job.settings.frames_per_clip)
    labels = _emotion_labels(job, models, clip16k.samples, features.padded_frames)  # the official path: unseparated
    pipeline = MemoPipeline(models, loaded.vae)
    pipeline.check_inputs(pixels, face_embedding, features, labels, job.settings, state)
    first_clip = state.next_clip if state is not None else 0
    return PreparedJob(pipeline, pixels, face_embedding, features, labels, state, first_clip, job.settings)


def generation_heap(device: str):
    """For the owner of the process around the making of the clips: on a CPU, freed heap blocks are
    kept for reuse (`tuned_allocator`); entered after loading, so weights are placed by the C
    library's usual rules (loading under it raised the mid benchmark's peak RSS by about 0.9 GB)."""
    return tuned_allocator() if torch.device(device).type == "cpu" else contextlib.nullcontext()


def run(job: Job) -> dict:
    started = time.perf_counter()
    # everything that can be checked without a model is checked first: a typo must not cost a load
    _check_input_paths(job)
    if job.resume:
        _refuse_replacing_the_first_part(job)
    prepare_outputs(job)
    clip16k = load_audio(job.audio)
    _check_settings_and_emotion(job, clip16k)
    load_image(job.image)
    state = GenerationState.load(job.resume) if job.resume else None
    vocal_mode = vocal_mode_of(job)

    from .plan_cli import check_job

    check_job(job)  # the memory plan against the free memory, before any weight is read
    prepared = prepare_job(job, load_models(job), clip16k, state, vocal_mode)
    pipeline, pixels, face_embedding = prepared.pipeline, prepared.pixels, prepared.face_embedding
    features, labels, first_clip = prepared.features, prepared.labels, prepared.first_clip
    mux = load_audio(job.audio, target_rate=MUX_SAMPLE_RATE)
    total = pipeline.total_steps(features, job.settings) - first_clip * job.settings.steps
    bar = _progress(total, job.progress)
    try:
        with generation_heap(job.device):
            write_generation(pipeline, pixels, face_embedding, features, labels, job.settings, job.out,
                             audio=(mux.samples, MUX_SAMPLE_RATE), state=state,
                             state_path=job.save_state or default_state_path(job.out),
                             save_every_clip=job.save_state is not None,
                             replace_state=job.save_state is not None or job.overwrite, continue_hint=_continue_hint,
                             on_step=lambda info: bar.update(1))
    finally:
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


def demo(out: Path, seconds: float = 2.0, resolution: int = 64, steps: int = 3, seed: int = 42, progress: bool = True,
         overwrite: bool = False) -> dict:
    from .tiny import write_tiny_bundle

    with tempfile.TemporaryDirectory(prefix="memo-demo-") as tmp:
        tmp = Path(tmp)
        paths = write_tiny_bundle(tmp / "models", seed)
        job = Job(
            checkpoint=paths["memo"], vae=paths["vae"], wav2vec=paths["wav2vec2"],
            image=make_test_portrait(tmp / "portrait.png"), audio=make_test_tone(tmp / "tone.wav", seconds), out=out,
            settings=GenerationSettings(steps=steps, seed=seed, frames_per_clip=16, past_frames=16, init_past_frames=16),
            resolution=resolution, emotion2vec=paths["emotion2vec"], allow_no_face=True, progress=progress,
            overwrite=overwrite,
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
    gen.add_argument("--reference-mode", choices=REFERENCE_MODES, default="resize",
                     help="resize: the whole picture resized to a square (the official preprocessing; a non-square "
                          "picture is squashed); center-crop: the centred square; face-crop: a square around the face")
    gen.add_argument("--crop", action="store_true", help="same as --reference-mode face-crop")
    gen.add_argument("--crop-scale", type=float, help="crop size relative to the face box")
    gen.add_argument("--allow-no-face", action="store_true", help="use a zero identity embedding when no face/face model is found")
    gen.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="the dtype the networks compute in")
    gen.add_argument("--weight-dtype", default="default", choices=list(WEIGHT_DTYPES),
                     help="store the MEMO networks' layer weights in this dtype and cast them to --dtype layer by layer "
                          "(fp8 weights take a quarter of fp32's memory); default: --dtype")
    gen.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    gen.add_argument("--offload", default="none", choices=OFFLOAD_MODES,
                     help="model: only the running network on --device, the others wait in RAM; sequential: the MEMO "
                          "networks' weights stay in RAM and are copied to --device layer by layer (least memory, slowest)")
    gen.add_argument("--compile", action="store_true",
                     help="torch.compile the diffusion net (slower first clips, faster long runs)")
    gen.add_argument("--vae-batch", type=int, default=None,
                     help="frames per VAE call (default: chosen per device; 1 = exactly the official per-frame calls)")
    gen.add_argument("--vae-tiling", choices=list(TILING_MODES), default="auto",
                     help=f"auto: frames above {TILE_SIZE} px are encoded/decoded in {TILE_SIZE} px tiles overlapping by "
                          f"{TILE_OVERLAP} px (less memory; the pixels differ from whole frames, see docs/architecture.md); "
                          "off: whole frames")
    gen.add_argument("--save-state", type=Path, help="after every clip, save the motion memory + past frames here")
    gen.add_argument("--vocal-separation", choices=["official", "full-band"], default="auto",
                     help="separate the vocals with misc/vocal_separator/Kim_Vocal_2.onnx before feature extraction; "
                          "default: 'official' (as MEMO: the 16 kHz track is separated) when the file is present; "
                          "'full-band' separates the original track instead")
    gen.add_argument("--no-vocal-separation", action="store_true", help="extract features from the whole track")
    gen.add_argument("--resume", type=Path, help="continue a generation from a state saved by --save-state or by an "
                     "interrupted run; --out then gets the remaining clips (with the audio from there on)")
    gen.add_argument("--overwrite", action="store_true", help="replace --out / --save-state if they already exist")
    gen.add_argument("--no-progress", action="store_true")

    dem = sub.add_parser("demo", help="full chain on tiny random weights and a generated portrait/tone")
    dem.add_argument("--out", type=Path, required=True)
    dem.add_argument("--seconds", type=float, default=2.0)
    dem.add_argument("--resolution", type=int, default=64)
    dem.add_argument("--steps", type=int, default=3)
    dem.add_argument("--seed", type=int, default=42)
    dem.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    dem.add_argument("--no-progress", action="store_true")

    from .batch.cli import add_parser as add_batch_parser

    add_batch_parser(sub, gen)
    from .plan_cli import add_memory_budget_argument, add_parser as add_plan_parser

    add_memory_budget_argument(gen)  # after batch copied gen's options: a batch does not take it (yet)
    add_plan_parser(sub, gen)
    from .models_cli import add_parser as add_models_parser

    add_models_parser(sub)
    from .quality.cli import add_report_parser

    add_report_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _run_command(build_parser().parse_args(argv))


def _run_command(args) -> int:
    if args.command == "models":
        from .models_cli import run as run_models

        return run_models(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.command == "batch":
        from .batch.cli import main_batch

        return main_batch(args)
    if args.command == "report":
        from .quality.cli import main_report

        return main_report(args)
    if args.command == "plan":
        from .plan_cli import main_plan

        return main_plan(args)
    with stop_signals():  # SIGTERM/SIGHUP stop a run as Ctrl-C does; finishing its files is not interruptible
        try:
            if args.command == "demo":
                info = demo(args.out, args.seconds, args.resolution, args.steps, args.seed, not args.no_progress,
                            args.overwrite)
            else:
                settings = GenerationSettings(steps=args.steps, guidance_scale=args.cfg, frames_per_clip=args.frames_per_clip,
                                              past_frames=args.past_frames, init_past_frames=args.past_frames, seed=args.seed,
                                              fps=args.fps)
                info = run(Job(args.checkpoint, args.vae, args.wav2vec, args.image, args.audio, args.out, settings,
                               resolution=args.resolution, emotion=args.emotion, emotion2vec=args.emotion2vec,
                               face_models=args.face_models, crop=args.crop, reference_mode=args.reference_mode, crop_scale=args.crop_scale,
                               allow_no_face=args.allow_no_face, dtype=args.dtype, weight_dtype=args.weight_dtype,
                               device=args.device, offload=args.offload, vae_batch_size=args.vae_batch,
                               vae_tiling=args.vae_tiling, compile=args.compile, save_state=args.save_state,
                               progress=not args.no_progress,
                               overwrite=args.overwrite, resume=args.resume, memory_budget=args.memory_budget,
                               vocal_separation=None if args.no_vocal_separation else args.vocal_separation))
        except (ValueError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except OSError as err:  # one line naming the path, never a traceback
            where = f"{err.filename}: " if getattr(err, "filename", None) else ""
            print(f"error: {where}{err.strerror or err}", file=sys.stderr)
            return 2
        except StopRequested as stop:
            print(f"stopped by {stop}", file=sys.stderr)
            return 128 + stop.signum
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    out = args.out
    print(f"wrote {out}: {info['frames']} frames {info['width']}x{info['height']} at {float(info['fps']):g} fps, "
          f"audio {info['audio_duration']:.2f} s, in {info['seconds']:.1f} s")
    return 0 if info["frames"] > 0 and not math.isnan(info["seconds"]) else 1
