"""Speed and memory of this checkout against another revision, measured the same way.

    python bench/compare_revisions.py [--baseline 3fe5795] [--config mid|small] [--runs 3]

The baseline is checked out with `git worktree` into a temporary folder. Runs alternate
(current, baseline, current, ...), each in a fresh process that builds the same random-weight
models and inputs with `bench/configs.py` from *this* checkout but imports `memo_pipeline`
from the revision under test, CPU-tuned as each revision's command line runs it (`configs.py`);
only the generation itself is timed. Per run it prints wall
seconds per frame, CPU seconds per frame (user + system of the process, all threads), peak RSS
and the load average at its start; then the medians, the ratio current / baseline, and as the
last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CONFIGS = {
    # name: (size, resolution, clips, steps)
    "mid": ("mid", 128, 2, 4),
    "small": ("small", 128, 2, 2),
    "tiny": ("tiny", 64, 2, 2),
}


def child(args) -> None:
    """One measured generation with `memo_pipeline` imported from `args.root`."""
    sys.path[:0] = [args.root, str(HERE)]
    import torch

    torch.set_num_threads(args.threads)
    from configs import build_case, owned_allocator, settings_for

    size, resolution, clips, steps = CONFIGS[args.config]
    case = build_case(size, resolution, clips)
    settings = settings_for(steps=steps)
    with owned_allocator():  # the heap setting around the generation, as the command line enters it
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        with torch.no_grad():
            frames = sum(clip.frames.shape[0] for clip in case.pipeline.generate(case.pixels, case.face, case.audio,
                                                                                    case.emotion, settings))
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"s_per_frame": wall / frames, "cpu_s_per_frame": cpu / frames, "frames": frames,
                      "peak_rss_mib": after.ru_maxrss / 1024, "load_at_start": load}))


def run_once(root: Path, config: str, threads: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "_child", "--root", str(root), "--config", config,
               "--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(root))
    if done.returncode != 0:
        raise RuntimeError(f"benchmark run in {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_worktree(revision: str, folder: Path) -> Path:
    target = folder / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(target), revision], check=True)
    return target


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def compare(config: str, baseline: str, runs: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="memo-compare-") as tmp:
        other = baseline_worktree(baseline, Path(tmp))
        try:
            measured = {"current": [], "baseline": []}
            for i in range(runs):
                for name, root in (("current", ROOT), ("baseline", other)):
                    result = run_once(root, config, threads)
                    measured[name].append(result)
                    print(f"{config} run {i + 1} {name:<8}: {result['s_per_frame']:.3f} s/frame, "
                          f"{result['cpu_s_per_frame']:.3f} CPU-s/frame, peak RSS {result['peak_rss_mib']:.0f} MiB, "
                          f"load {result['load_at_start']:.2f}", flush=True)
        finally:
            remove_worktree(other)
    cur, base = measured["current"], measured["baseline"]
    summary = {
        "config": config, "baseline": baseline, "runs": runs, "threads": threads,
        "median_s_per_frame": median(cur, "s_per_frame"), "baseline_median_s_per_frame": median(base, "s_per_frame"),
        "median_cpu_s_per_frame": median(cur, "cpu_s_per_frame"),
        "baseline_median_cpu_s_per_frame": median(base, "cpu_s_per_frame"),
        "peak_rss_mib": median(cur, "peak_rss_mib"), "baseline_peak_rss_mib": median(base, "peak_rss_mib"),
    }
    summary["ratio"] = summary["median_cpu_s_per_frame"] / summary["baseline_median_cpu_s_per_frame"]
    summary["wall_ratio"] = summary["median_s_per_frame"] / summary["baseline_median_s_per_frame"]
    print(f"{config} median: current {summary['median_s_per_frame']:.3f} s/frame "
          f"({summary['median_cpu_s_per_frame']:.3f} CPU-s), baseline {summary['baseline_median_s_per_frame']:.3f} s/frame "
          f"({summary['baseline_median_cpu_s_per_frame']:.3f} CPU-s); ratio current/baseline {summary['ratio']:.3f} CPU, "
          f"{summary['wall_ratio']:.3f} wall; peak RSS {summary['peak_rss_mib']:.0f} vs "
          f"{summary['baseline_peak_rss_mib']:.0f} MiB", flush=True)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="compare", choices=["compare", "_child"])
    parser.add_argument("--baseline", default="3fe5795", help="revision to compare against (default: 3fe5795)")
    parser.add_argument("--config", default="mid", choices=sorted(CONFIGS), help="what to generate (default: mid)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each checkout (at least 3 for a median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode == "_child":
        child(args)
        return
    print(json.dumps(compare(args.config, args.baseline, args.runs, args.threads)))


if __name__ == "__main__":
    main()
