"""Manifest rows turned into checked, fully resolved jobs before any model loads.

A row names its `image` and `audio` (relative paths are read from the manifest's folder), an
optional `out` (relative to `--out-dir`; default `<image>-<audio>.mp4`), and per-row values of the
generation settings; everything else comes from the command line, as for `generate`. Every row is
checked (files, audio decoding, settings, emotion schedule, outputs) and every problem of the
whole file is reported at once with its line, so a 300-row manifest is fixed in one pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ..file_paths import same_file
from ..manifest import ManifestError, ManifestProblem, manifest_format, read_manifest
from ..settings import num_clips
from ..reference import REFERENCE_MODES

OUTPUT_TAG = "memo_batch_row"
"""mp4 container tag holding the fingerprint of the row that made the file (see `row_fingerprint`)."""


def _int(text) -> int:
    if isinstance(text, bool):
        raise ValueError
    if isinstance(text, float):
        if not text.is_integer():
            raise ValueError
        return int(text)
    return int(str(text).strip())


def _float(text) -> float:
    if isinstance(text, bool):
        raise ValueError
    return float(str(text).strip())


def _separation(text) -> str | None:
    value = str(text).strip().lower()
    if value in ("none", "off", "no"):
        return None
    if value not in ("auto", "official", "full-band"):
        raise ValueError
    return value


def _mode(text) -> str:
    value = str(text).strip()
    if value not in REFERENCE_MODES:
        raise ValueError
    return value


def _weight_dtype(text) -> str:
    from ..layers import WEIGHT_DTYPES

    value = str(text).strip()
    if value not in WEIGHT_DTYPES:
        raise ValueError
    return value


# column -> (parser, what a good value looks like, where it goes: "settings" field or Job field)
SETTING_COLUMNS = {
    "seed": (_int, "a whole number", "settings.seed"),
    "steps": (_int, "a whole number", "settings.steps"),
    "cfg": (_float, "a number", "settings.guidance_scale"),
    "fps": (_float, "a number", "settings.fps"),
    "frames_per_clip": (_int, "a whole number", "settings.frames_per_clip"),
    "past_frames": (_int, "a whole number", "settings.past_frames"),
    "resolution": (_int, "a whole number", "resolution"),
    "emotion": (str, "a label or a schedule", "emotion"),
    "reference_mode": (_mode, f"one of {', '.join(REFERENCE_MODES)}", "reference_mode"),
    "crop_scale": (_float, "a number", "crop_scale"),
    "vocal_separation": (_separation, "auto, official, full-band or none", "vocal_separation"),
    "weight_dtype": (_weight_dtype, "one of default, bf16, fp16, fp8_e4m3fn, fp8_e5m2", "weight_dtype"),
}
PATH_COLUMNS = ("image", "audio", "emotion2vec", "out")
KNOWN_COLUMNS = (*PATH_COLUMNS, *SETTING_COLUMNS)


def column_name(name: str) -> str:
    """`frames-per-clip`, `Frames_Per_Clip` and `frames_per_clip` name the same column."""
    return str(name).strip().lower().replace("-", "_")


@dataclass
class BatchRow:
    """One video of a batch: its manifest line, its `generate` job and what its output must hold."""

    line: int
    job: object  # cli.Job (kept untyped so this module imports without torch at class creation)
    expected_frames: int  # frames the finished mp4 holds (the shorter of the generated video and the audio)
    num_clips: int
    fingerprint: str  # changes whenever anything that changes the video changes

    @property
    def out(self) -> Path:
        return Path(self.job.out)

    @property
    def work_dir(self) -> Path:
        """Hidden folder next to the output with the row's finished clips and its state."""
        return self.out.with_name(f".{self.out.name}.memo-batch")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def row_fingerprint(job) -> str:
    """A hash of everything that decides the row's video: input file contents, settings, models, precision."""
    fields = {name: getattr(job, name) for name in ("resolution", "emotion", "crop", "reference_mode", "crop_scale",
                                                    "allow_no_face", "dtype", "device", "vae_batch_size",
                                                    "vocal_separation")}
    if job.weight_dtype != "default":  # (absent when default: rows finished before weight dtypes keep their fingerprint)
        fields["weight_dtype"] = job.weight_dtype
    if job.vae_tiling != "auto":  # only a non-default adds a field: older fingerprints stay valid
        fields["vae_tiling"] = job.vae_tiling
    text = json.dumps({
        "image": _file_digest(Path(job.image)), "audio": _file_digest(Path(job.audio)),
        "models": [None if p is None else os.fspath(p) for p in (job.checkpoint, job.vae, job.wav2vec, job.emotion2vec, job.face_models)],
        "settings": dataclasses.asdict(job.settings), **fields,
    }, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _resolve(value, base: Path) -> Path:
    path = Path(os.path.expanduser(str(value).strip()))
    return path if path.is_absolute() else base / path


def _apply(job, column: str, value) -> None:
    parse, _, target = SETTING_COLUMNS[column]
    parsed = parse(value)
    if target.startswith("settings."):
        setattr(job.settings, target.split(".", 1)[1], parsed)
        if column == "past_frames":
            job.settings.init_past_frames = parsed
    else:
        setattr(job, target, parsed)


def expected_frames(job, samples_16k: int, samples_mux: int, mux_rate: int) -> int:
    """Frames of the finished file: the generated frames, cut where the muxed audio ends (as VideoWriter cuts)."""
    from ..audio.features import frame_count
    from ..video_io import as_fps_fraction

    generated = frame_count(samples_16k, job.settings.fps)
    audio_limit = math.ceil(Fraction(samples_mux) * as_fps_fraction(job.settings.fps) / mux_rate)
    return min(generated, audio_limit)


def build_rows(manifest_path: Path | str, template, out_dir: Path) -> list[BatchRow]:
    """Every row of the manifest as a checked `BatchRow`; a `ManifestError` lists every bad row.

    `template` is a `cli.Job` with the command line's models and defaults (its image/audio/out unused).
    """
    from .. import cli
    from ..audio.features import frame_count
    from ..audio.io import load_audio
    from .rowfolder import output_state

    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    is_csv = manifest_format(manifest_path) == "csv"
    base = manifest_path.resolve().parent
    problems: list[ManifestProblem] = []
    if is_csv:
        unknown = [c for c in manifest.columns if column_name(c) not in KNOWN_COLUMNS]
        if unknown:
            problems.append(ManifestProblem(1, f"unknown column(s) {', '.join(unknown)}: a row can set "
                                               f"{', '.join(KNOWN_COLUMNS)}"))
    rows: list[BatchRow] = []
    outputs: dict[Path, int] = {}
    for row in manifest.rows:
        values = {column_name(k): v for k, v in row.values.items()}
        reasons: list[str] = []
        unknown = [k for k in row.values if column_name(k) not in KNOWN_COLUMNS]
        if unknown and not is_csv:
            reasons.append(f"unknown setting(s) {', '.join(unknown)}")
        job = dataclasses.replace(template, settings=dataclasses.replace(template.settings), resume=None,
                                  save_state=None, progress=False)
        for column in SETTING_COLUMNS:
            if column in values:
                try:
                    _apply(job, column, values[column])
                except ValueError:
                    reasons.append(f"{column} {values[column]!r} is not {SETTING_COLUMNS[column][1]}")
        for column in ("image", "audio"):
            if column not in values:
                reasons.append(f"no {column}")
        job.image = _resolve(values["image"], base) if "image" in values else None
        job.audio = _resolve(values["audio"], base) if "audio" in values else None
        if "emotion2vec" in values:
            job.emotion2vec = _resolve(values["emotion2vec"], base)
            if "emotion" in values:
                reasons.append("give emotion or emotion2vec, not both")
            job.emotion = None
        elif "emotion" in values:
            job.emotion2vec = None
        clip16k = mux = None
        for column, path in (("image", job.image), ("audio", job.audio), ("emotion2vec", job.emotion2vec)):
            if path is not None and not path.exists():
                reasons.append(f"{column} {path} does not exist")
                continue
            try:
                if column == "image" and path is not None:
                    from ..face.image import load_image

                    load_image(path)
                elif column == "audio" and path is not None:
                    clip16k = load_audio(path)
                    mux = load_audio(path, target_rate=cli.MUX_SAMPLE_RATE)
            except (ValueError, OSError, RuntimeError) as err:
                reasons.append(f"unreadable {column} {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
        if clip16k is not None and not reasons:
            try:
                cli._check_settings_and_emotion(job, clip16k)
                if job.vocal_separation != "auto":  # auto never fails (and would log once per row)
                    cli.vocal_mode_of(job)
            except ValueError as err:
                reasons.append(str(err))
        out = _resolve(values["out"], out_dir) if "out" in values else (
            out_dir / f"{job.image.stem}-{job.audio.stem}.mp4" if job.image and job.audio else None)
        if out is not None:
            job.out = out
            reasons.extend(_output_problems(job, manifest_path, outputs, row.line))
        if not reasons:
            frames = expected_frames(job, clip16k.num_samples, len(mux.samples), mux.sample_rate)
            clips = num_clips(frame_count(clip16k.num_samples, job.settings.fps), job.settings.frames_per_clip)
            batch_row = BatchRow(row.line, job, frames, clips, row_fingerprint(job))
            if not job.overwrite and output_state(batch_row) == "foreign":
                reasons.append(f"out {job.out} exists and was not made by this row with these settings; pass "
                               "--overwrite to replace it")
        if reasons:
            problems.extend(ManifestProblem(row.line, reason) for reason in reasons)
            continue
        rows.append(batch_row)
    if problems:
        raise ManifestError(manifest_path, problems)
    return rows


def _output_problems(job, manifest_path: Path, outputs: dict, line: int) -> list[str]:
    out = Path(job.out)
    reasons = []
    if out.suffix.lower() != ".mp4":
        reasons.append(f"out {out}: give the name an .mp4 extension")
    key = Path(os.path.abspath(out))
    if key in outputs:
        reasons.append(f"out {out} is also the output of line {outputs[key]}")
    else:
        outputs[key] = line
    sources = {**{k.lstrip("-"): v for k, v in job.inputs().items()}, "manifest": manifest_path}
    for name, source in sources.items():
        source = Path(source)
        # a new file inside an input folder harms nothing; replacing one of its files would
        inside = source.is_dir() and out.exists() and out.resolve().is_relative_to(source.resolve())
        if same_file(out, source) or inside:
            reasons.append(f"out {out} would overwrite the input {name} {source}")
    if out.is_dir():
        reasons.append(f"out {out} is a folder")
    return reasons
