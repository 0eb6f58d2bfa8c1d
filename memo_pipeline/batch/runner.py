"""Rows run one after another on models loaded once: the in-process batch, and each Ray worker's body.

A row continues from what its folder holds (see `rowfolder`): the clips before its saved state are
not generated again, on this worker or on any other. `stop` (an Event) ends a row after the clip in
progress, with that clip and its state on disk.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .jobs import BatchRow
from .rowfolder import RowFolder, output_state

logger = logging.getLogger("memo_pipeline")

DONE, SKIPPED, FAILED, INTERRUPTED, NOT_STARTED = "done", "skipped", "failed", "interrupted", "not started"


@dataclass
class RowResult:
    line: int
    out: str
    status: str
    worker: str = ""
    seconds: float = 0.0
    frames: int = 0
    clips_generated: int = 0
    resumed_from: int = 0  # the clip this row's last run started at (> 0: it continued earlier work)
    attempts: int = 1  # runs of the row (a worker lost during the row adds one)
    error: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.removeprefix("error: ")


@dataclass
class RowRunner:
    """Loads the models of `template` (a `cli.Job`) on first need and runs rows with them."""

    template: object
    name: str = field(default_factory=worker_name)
    threads: int | None = None  # CPU threads; None: the process's setting when the runner was made
    keep_clips: bool = False  # keep each row's lossless clip files next to its mp4
    loaded: object = None
    loaded_weight_dtype: str | None = None  # the weight dtype `loaded` stores its layer weights in
    load_seconds: float = 0.0  # model loads, counted as start-up, not in any row's seconds

    def __post_init__(self):
        import torch

        self.threads = self.threads or torch.get_num_threads()

    def load(self, weight_dtype: str | None = None):
        """The template's models, with the layer weights stored in `weight_dtype` (a row's own
        setting; None: the template's). Models of another weight dtype are let go first."""
        import dataclasses

        wanted = weight_dtype or self.template.weight_dtype
        if self.loaded is not None and self.loaded_weight_dtype != wanted:
            self.loaded = None
        if self.loaded is None:
            from ..cli import load_models

            started = time.perf_counter()
            self.loaded = load_models(dataclasses.replace(self.template, weight_dtype=wanted))
            self.loaded_weight_dtype = wanted
            self.load_seconds += time.perf_counter() - started
        return self.loaded

    def run(self, row: BatchRow, stop: threading.Event | None = None,
            on_clip: Callable[[BatchRow, int], None] | None = None) -> RowResult:
        """Run (or finish) one row; a problem of the row itself is a failed result, never an exception."""
        import torch

        # set in the thread that runs the row: a thread of its own (a Ray actor's) would otherwise
        # run with the default thread count, and the count changes how sums are split (last bits)
        torch.set_num_threads(self.threads)
        started, loading_before = time.perf_counter(), self.load_seconds
        result = RowResult(row.line, str(row.out), FAILED, self.name)
        try:
            self._run(row, stop or threading.Event(), on_clip, result)
        except (Exception, SystemExit) as err:  # the row's own problem (bad audio, no face...): report, go on
            result.status, result.error = FAILED, one_line(err)
            logger.debug("row on line %d failed", row.line, exc_info=True)
        # a model load on the first row's way is start-up, as a Ray worker's load before its first row
        result.seconds = time.perf_counter() - started - (self.load_seconds - loading_before)
        return result

    def _run(self, row: BatchRow, stop: threading.Event, on_clip, result: RowResult) -> None:
        from .. import cli
        from ..audio.io import load_audio
        from ..video_io import frame_to_uint8

        if output_state(row) == "complete":
            result.status, result.frames = SKIPPED, row.expected_frames
            return
        folder = RowFolder(row.work_dir)
        folder.claim(row.fingerprint, self.name)
        state = folder.resume_state()
        first = state.next_clip if state is not None else 0
        result.resumed_from = first
        if first < row.num_clips:
            job = row.job
            clip16k = load_audio(job.audio)
            prepared = cli.prepare_job(job, self.load(job.weight_dtype), clip16k, state, cli.vocal_mode_of(job))
            if prepared.num_clips != row.num_clips:
                raise RuntimeError(f"the audio gives {prepared.num_clips} clips, {row.num_clips} were expected")
            with cli.generation_heap(job.device):  # a worker owns its process, as the command line does
                for clip in prepared.pipeline.generate(prepared.pixels, prepared.face_embedding, prepared.features,
                                                       prepared.labels, job.settings, state=state):
                    frames = clip.frames.permute(0, 2, 3, 1)
                    pixels = np.stack([frame_to_uint8(frame) for frame in frames])
                    folder.write_clip(clip.index, pixels, job.settings.fps)
                    folder.save_state(clip.state)  # the pipeline stamps its settings record on each state
                    result.clips_generated += 1
                    if on_clip is not None:
                        on_clip(row, clip.index + 1)
                    if stop.is_set() and clip.index + 1 < row.num_clips:
                        result.status = INTERRUPTED
                        return
        frames = folder.join(row, row.num_clips)
        if frames != row.expected_frames:
            raise RuntimeError(f"the video has {frames} frames, {row.expected_frames} were expected")
        folder.finish(self.keep_clips)
        result.status, result.frames = DONE, frames


@dataclass
class Startup:
    """What a batch spent before its rows could run: `seconds` in all (in this process: the model
    load; on Ray: from asking for the workers until every one is ready: its process, imports,
    models check and load), of which `model_load_seconds` loading the networks (the slowest worker's)."""

    seconds: float = 0.0
    model_load_seconds: float = 0.0

    def as_dict(self) -> dict:
        return {name: round(value, 3) for name, value in dataclasses.asdict(self).items()}


def run_in_process(rows: list[BatchRow], template, stop: threading.Event,
                   on_clip: Callable[[BatchRow, int], None] | None = None,
                   on_row: Callable[[BatchRow, RowResult], None] | None = None, keep_clips: bool = False,
                   startup: Startup | None = None) -> list[RowResult]:
    """Every row in manifest order on one `RowRunner`; rows after a stop are `not started`. The
    models load on the first row that needs them; `startup`, if given, receives the load's time."""
    runner = RowRunner(template, keep_clips=keep_clips)
    results = []
    for row in rows:
        if stop.is_set():
            result = RowResult(row.line, str(row.out), NOT_STARTED)
        else:
            result = runner.run(row, stop, on_clip)
        results.append(result)
        if on_row is not None:
            on_row(row, result)
    if startup is not None:
        startup.seconds = startup.model_load_seconds = runner.load_seconds
    return results


def models_problem(template) -> str | None:
    """What `models check` would say is wrong with the core models `template` names, or None."""
    from ..loading import COMPONENTS
    from ..model_files import FileProblem, check_memo_component, check_vae, check_wav2vec2

    checks = [(Path(template.checkpoint) / name, lambda p, c=name: check_memo_component(p, c)) for name in COMPONENTS
              if name != "emotion_classifier"]
    checks += [(Path(template.vae), check_vae), (Path(template.wav2vec), check_wav2vec2)]
    for path, check in checks:
        if not path.exists():
            return f"{path} does not exist on {socket.gethostname()} (models check: missing)"
        try:
            check(path)
        except (FileProblem, ValueError, OSError) as err:
            return f"{path} on {socket.gethostname()} cannot be used: {one_line(err)}"
    return None
