"""`python -m memo_pipeline batch JOBS --out-dir DIR [generate's options] [--ray [ADDRESS] --workers N]`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

PER_VIDEO_OPTIONS = {"image", "audio", "out", "resume", "save_state", "help"}
"""`generate` options that name one video: a batch takes them from the manifest's rows instead."""


def add_parser(sub, generate_parser: argparse.ArgumentParser) -> None:
    """The batch subcommand, with every `generate` option that is not about one video (the same
    definitions, so the two never drift apart)."""
    batch = sub.add_parser(
        "batch", help="many videos from a CSV / JSONL manifest, in this process or on Ray workers",
        description="One video per manifest row (image, audio, optional out, emotion or emotion2vec, seed and "
                    "per-row settings); the command line gives the models and the defaults.")
    batch.add_argument("jobs", type=Path, help="manifest: .csv with a header row, or .jsonl")
    batch.add_argument("--out-dir", type=Path, required=True, help="folder for the videos (and relative 'out' paths)")
    batch.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                       help="run on Ray: this machine when no address is given, else the cluster at ADDRESS "
                            "(e.g. ray://head:10001 or auto)")
    batch.add_argument("--workers", type=int, help="Ray workers (default: one per GPU, or 1 on CPU)")
    batch.add_argument("--threads-per-worker", type=int, default=1, help="CPU threads (and Ray CPUs) of each worker")
    batch.add_argument("--report", type=Path, help="write the per-row results as JSON here")
    batch.add_argument("--keep-clips", action="store_true",
                       help="keep each row's lossless clip files (FFV1 .mkv, the exact frames) in its hidden "
                            ".NAME.mp4.memo-batch folder next to the mp4")
    for action in generate_parser._actions:
        if action.dest not in PER_VIDEO_OPTIONS:
            batch._add_action(action)


def template_job(args):
    """A `cli.Job` with the command line's models and defaults; rows fill in image, audio and out."""
    from ..cli import Job
    from ..pipeline import GenerationSettings

    settings = GenerationSettings(steps=args.steps, guidance_scale=args.cfg, frames_per_clip=args.frames_per_clip,
                                  past_frames=args.past_frames, init_past_frames=args.past_frames, seed=args.seed,
                                  fps=args.fps)
    return Job(args.checkpoint, args.vae, args.wav2vec, None, None, None, settings, resolution=args.resolution,
               emotion=args.emotion, emotion2vec=args.emotion2vec, face_models=args.face_models, crop=args.crop,
               reference_mode=args.reference_mode, crop_scale=args.crop_scale, allow_no_face=args.allow_no_face,
               dtype=args.dtype, weight_dtype=args.weight_dtype, device=args.device, vae_batch_size=args.vae_batch,
               vae_tiling=args.vae_tiling, compile=args.compile,
               progress=False, overwrite=args.overwrite,
               offload=args.offload,
               vocal_separation=None if args.no_vocal_separation else args.vocal_separation)


def check_template(template, on_ray: bool) -> None:
    """Model folders and face models, before any row is read (on Ray each worker checks its own node)."""
    from ..cli import UsageError, _check_input_paths
    from ..face import find_face_models

    if on_ray:
        return
    _check_input_paths(template)
    _, recognizer = find_face_models(template.face_models or template.checkpoint)
    if recognizer is None and not template.allow_no_face:
        raise UsageError(f"no face models (scrfd_10g_bnkps.onnx, glintr100.onnx) under "
                         f"{template.face_models or template.checkpoint}; pass --face-models DIR or --allow-no-face")


@contextmanager
def stop_on_ctrl_c(stop: threading.Event):
    """The first Ctrl-C lets every row finish its current clip and keep it; a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after the current clips (finished clips are kept; Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main_batch(args) -> int:
    from ..manifest import ManifestError
    from .jobs import build_rows
    from .report import BatchProgress, summary_table, write_report
    from .rowfolder import RowFolder, output_state
    from .runner import DONE, FAILED, SKIPPED, RowResult, Startup, run_in_process

    started = time.perf_counter()
    if args.ray is None and (args.workers is not None or args.threads_per_worker != 1):
        print("error: --workers and --threads-per-worker need --ray", file=sys.stderr)
        return 2
    if (args.workers is not None and args.workers < 1) or args.threads_per_worker < 1:
        print("error: --workers and --threads-per-worker must be >= 1", file=sys.stderr)
        return 2
    if args.ray is not None:
        from .cluster import ClusterError, import_ray

        try:
            import_ray()
        except ClusterError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    template = template_job(args)
    try:
        check_template(template, args.ray is not None)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        rows = build_rows(args.jobs, template, args.out_dir)
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    done_before = {row.line for row in rows if output_state(row) == "complete"}
    todo = [row for row in rows if row.line not in done_before]
    initial = {row.line: row.num_clips for row in rows if row.line in done_before}
    for row in todo:
        if RowFolder(row.work_dir).fingerprint() == row.fingerprint:
            initial[row.line] = RowFolder(row.work_dir).clips_on_disk()
    progress = BatchProgress(rows, enabled=not args.no_progress, initial=initial)
    results: dict[int, RowResult] = {}
    for row in rows:
        if row.line in done_before:
            results[row.line] = RowResult(row.line, str(row.out), SKIPPED, frames=row.expected_frames)
            progress.row_done(row, results[row.line])
    stop = threading.Event()
    mode, workers, startup = "in-process", 1, Startup()
    code = 0
    try:
        with stop_on_ctrl_c(stop):
            if not todo:
                pass
            elif args.ray is None:
                for result in run_in_process(todo, template, stop, progress.clip_done, progress.row_done,
                                             args.keep_clips, startup):
                    results[result.line] = result
            else:
                from .cluster import ClusterError, run_on_ray

                mode = "ray"
                try:
                    ran, workers = run_on_ray(todo, template, args.ray or None, args.workers, args.threads_per_worker,
                                              stop, progress.clip_done, progress.row_done, args.keep_clips, startup)
                except ClusterError as err:
                    progress.close()
                    print(f"error: {err}", file=sys.stderr)
                    return 2
                for result in ran:
                    results[result.line] = result
    except KeyboardInterrupt:
        progress.close()
        print("aborted: the clips finished so far are kept; run the same command again to continue", file=sys.stderr)
        return 130
    progress.close()
    ordered = [results[row.line] for row in rows]
    print(summary_table(ordered))
    if args.report is not None:
        write_report(args.report, ordered, args.jobs, mode, workers, time.perf_counter() - started, startup)
    if any(r.status == FAILED for r in ordered):
        code = 1
    elif any(r.status not in (DONE, SKIPPED) for r in ordered):
        print("stopped: run the same command again to continue where it stopped", file=sys.stderr)
        code = 130
    return code
