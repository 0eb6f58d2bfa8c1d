"""One row's durable work: its finished clips, its generation state, and the final mp4 made from them.

A worker can be killed at any instant (SIGKILL, a lost node), so every finished clip is written
at once to its own lossless file (FFV1 in Matroska: the exact 8-bit frames the mp4 encoder would
have received) and the state after it (as `generate --save-state` saves it) replaces the previous
one; both land under a temporary name and are renamed into place, so a file either is whole or is
not there. Whoever takes the row next, on any worker, continues from the state's clip. When the
last clip is in, the mp4 is encoded in one pass from the clip files with the whole soundtrack, as an
undisturbed run encodes it: the encoder receives the very same frames and samples however many
workers the row went through. (libx264 itself is not bit-reproducible from run to run here, so
the exact frames are what `--keep-clips` keeps and the tests compare; the decoded soundtrack is
reproducible.) The state, and the clip files unless kept, are then removed; `row.json` (the row's
fingerprint) stays, so a rerun knows the output as its own.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from .jobs import OUTPUT_TAG, BatchRow

CLIP_PATTERN = "clip-{:05d}.mkv"
STATE_FILE = "state.safetensors"
ROW_FILE = "row.json"


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def output_state(row: BatchRow) -> str:
    """`complete` (the mp4 of this very row, with every frame), `ours` (made or started by this
    row, not complete), `absent`, or `foreign` (a file this row did not make, or made with other settings)."""
    from ..video_io import read_video_info, read_video_metadata

    recorded = RowFolder(row.work_dir).fingerprint()
    if not row.out.exists():
        return "absent"
    try:
        tag = read_video_metadata(row.out).get(OUTPUT_TAG)
        frames = read_video_info(row.out)["frames"]
    except (ValueError, OSError, RuntimeError):  # unreadable: truncated, or not a video at all
        return "ours" if recorded == row.fingerprint else "foreign"
    if tag != json.dumps(row.fingerprint):
        return "foreign" if recorded != row.fingerprint else "ours"
    return "complete" if frames == row.expected_frames else "ours"


class RowFolder:
    """The hidden work folder of one row (see the module docstring)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def fingerprint(self) -> str | None:
        try:
            return json.loads((self.path / ROW_FILE).read_text())["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def claim(self, fingerprint: str, worker: str) -> None:
        """Take the row: work of another fingerprint (changed inputs or settings) is thrown away."""
        if self.path.exists() and self.fingerprint() != fingerprint:
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        for leftover in self.path.glob(".*.tmp"):  # a write cut short by a killed worker
            leftover.unlink(missing_ok=True)
        self._write_json(ROW_FILE, {"fingerprint": fingerprint, "worker": worker, "pid": os.getpid()})

    def owner_pid(self) -> int | None:
        """The process id of the worker that last claimed the row."""
        try:
            return int(json.loads((self.path / ROW_FILE).read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_json(self, name: str, value: dict) -> None:
        target = self.path / name
        tmp = _temporary(target)
        tmp.write_text(json.dumps(value))
        os.replace(tmp, target)

    def clip_path(self, index: int) -> Path:
        return self.path / CLIP_PATTERN.format(index)

    def clips_on_disk(self) -> int:
        """Finished clips present from the first on (what a progress display counts)."""
        count = 0
        while self.clip_path(count).is_file():
            count += 1
        return count

    def resume_state(self):
        """The saved state when every clip before it is on disk, else None (the row starts over)."""
        from ..state import GenerationState, StateError

        path = self.path / STATE_FILE
        if not path.is_file():
            return None
        try:
            state = GenerationState.load(path)
        except StateError:
            return None
        if self.clips_on_disk() < state.next_clip:
            return None
        return state

    def write_clip(self, index: int, frames: np.ndarray, fps) -> None:
        """`frames` (n, H, W, 3) uint8, losslessly (FFV1, RGB), under the clip's name once complete."""
        import av

        from ..video_io import as_fps_fraction

        target = self.clip_path(index)
        tmp = _temporary(target)
        with av.open(os.fspath(tmp), "w", format="matroska") as container:
            stream = container.add_stream("ffv1", rate=as_fps_fraction(fps))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
            for i, frame in enumerate(frames):
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(format="bgr0")
                picture.pts = i
                for packet in stream.encode(picture):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        os.replace(tmp, target)

    def read_clip(self, index: int) -> np.ndarray:
        import av

        with av.open(os.fspath(self.clip_path(index))) as container:
            return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])

    def save_state(self, state) -> None:
        """`GenerationState.save` writes whole-or-nothing itself (hidden name, then rename)."""
        state.save(self.path / STATE_FILE)

    def join(self, row: BatchRow, num_clips: int) -> int:
        """Encode the finished mp4 from the clip files and the whole soundtrack; returns its frames."""
        from ..audio.io import load_audio
        from ..cli import MUX_SAMPLE_RATE
        from ..video_io import VideoWriter

        mux = load_audio(row.job.audio, target_rate=MUX_SAMPLE_RATE)
        with VideoWriter(row.out, row.job.settings.fps, audio=(mux.samples, MUX_SAMPLE_RATE),
                         metadata={OUTPUT_TAG: row.fingerprint}) as writer:
            for index in range(num_clips):
                writer.write(self.read_clip(index))
        return writer.frames_written

    def finish(self, keep_clips: bool = False) -> None:
        """The mp4 is complete: drop the state and (unless kept as a lossless master) the clips; keep `row.json`."""
        for path in self.path.iterdir():
            if path.name != ROW_FILE and not (keep_clips and path.suffix == ".mkv"):
                path.unlink(missing_ok=True)

    def read_all_clips(self) -> np.ndarray:
        """Every kept clip's frames in order (n, H, W, 3) uint8."""
        return np.concatenate([self.read_clip(i) for i in range(self.clips_on_disk())])
