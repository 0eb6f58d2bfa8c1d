"""Shared by the batch tests: tiny inputs, the command line, and decoding outputs for comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from memo_pipeline.cli import main, make_test_portrait, make_test_tone

# 64 px, one step, clips of 4 frames: a 0.5 s tone is 15 frames = 4 clips
SETTINGS = ["--allow-no-face", "--resolution", "64", "--steps", "1", "--frames-per-clip", "4", "--past-frames", "4",
            "--no-progress"]


def make_inputs(folder: Path, seconds: dict[str, float]) -> dict[str, Path]:
    """A portrait and one tone per name (different lengths, so rows differ)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"portrait": make_test_portrait(folder / "portrait.png", 96)}
    for name, length in seconds.items():
        paths[name] = make_test_tone(folder / f"{name}.wav", length)
    return paths


def write_csv(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def model_args(bundle: dict) -> list[str]:
    return ["--checkpoint", str(bundle["memo"]), "--vae", str(bundle["vae"]), "--wav2vec", str(bundle["wav2vec2"])]


def run_batch(bundle: dict, manifest: Path, out_dir: Path, *extra: str) -> tuple[int, dict]:
    report = out_dir.parent / f"{out_dir.name}-report.json"
    code = main(["batch", str(manifest), "--out-dir", str(out_dir), *model_args(bundle), *SETTINGS, "--keep-clips",
                 "--report", str(report), *extra])
    return code, (json.loads(report.read_text()) if report.exists() else {})


def by_line(report: dict) -> dict[int, dict]:
    return {row["line"]: row for row in report["rows"]}


def decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every video frame (RGB uint8) and every audio sample of a file."""
    import av

    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=-1)
    return frames, audio


def exact_frames(out: Path) -> np.ndarray:
    """The 8-bit frames the row gave the mp4 encoder (its clips kept by --keep-clips).

    libx264 is not bit-reproducible from run to run on this machine (two encodes of the same frames
    decode differently), so equality of videos is checked on the frames before encoding, as
    tests/test_cli.py checks `generate`'s; the decoded soundtrack is reproducible and compared as is."""
    from memo_pipeline.batch.rowfolder import RowFolder

    return RowFolder(out.with_name(f".{out.name}.memo-batch")).read_all_clips()


def assert_same_video(a: Path, b: Path) -> None:
    frames_a, audio_a = decode(a)
    frames_b, audio_b = decode(b)
    exact_a, exact_b = exact_frames(a), exact_frames(b)
    assert len(frames_a) == len(frames_b) <= len(exact_a), (a, b)
    assert exact_a.shape == exact_b.shape and np.array_equal(exact_a, exact_b), (a, b)
    assert audio_a.shape == audio_b.shape and np.array_equal(audio_a, audio_b), (a, b)
