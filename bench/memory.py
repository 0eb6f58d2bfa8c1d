"""Peak memory, speed and precision of every weight storage dtype, in one run.

    python bench/memory.py [--config mid|small|tiny] [--weight-dtypes default,bf16,...] [--runs 1] [--threads 2]

For each weight dtype (`--weight-dtype` of `generate`: default = fp32, bf16, fp16, fp8_e4m3fn,
fp8_e5m2) a fresh process loads the config's random-weight networks through the real loading
path (`bench/configs.py build_case(weight_dtype=...)`: each tensor read straight into its storage
dtype from a checkpoint written once under the temp folder) and times the config's generation
(`compare_revisions.CONFIGS`: mid = full-size networks, 128 px, 2 clips of 16 frames after 16
past frames, 4 steps, CFG 3.5; compute in fp32, CPU-tuned as the command line runs it), keeping
each clip's frames only (a caller that keeps a finished clip's state while the next one runs, as
`generate`'s writer does so that a stop can always save it, holds one more motion
memory: `plan`'s "motion memory" figure). Per
dtype it prints the process's peak RSS (VmHWM: loading and generation), wall and CPU seconds per
frame against the default, and the deviation from the fp32 default (max abs, PSNR on [0, 1]
frames) on the config's own video and on the golden full-pipeline case (the official fixture's
weights stored by the same rule). The last line is one JSON object.

Offload modes move weights between host and GPU memory: a CPU-only run cannot measure them.
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
sys.path[:0] = [str(ROOT), str(HERE)]

from compare_revisions import CONFIGS  # noqa: E402

WEIGHT_DTYPES = ["default", "bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2"]
TARGETS_GB = {"fp8_e4m3fn": 6.0, "bf16": 8.5}
"""Issue 20's mid-config targets: peak RSS (6.0 GB, 8.5 GB), each at <= 1.25x the default's s/frame.
The issue's own figures are binary: its "9.9 GB are fp32 weights" of the mid config are 9.95 GiB
(10.7e9 bytes), as RSS tools print them; both readings are checked and printed."""
UNITS = {"GiB": 2**30, "10^9 B": 10**9}
MAX_SLOWDOWN = 1.25
OFFLOAD_NOTE = ("offload modes (model, sequential) move weights between host and GPU memory: not measurable "
                "on a CPU-only run")


def vm_hwm_bytes() -> int:
    """This process's peak resident size (VmHWM), which includes file pages it has mapped."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # elsewhere: the same figure from getrusage


def child(args) -> None:
    """One weight dtype: load, generate (timed), write the frames, then the golden case's frames."""
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    from configs import build_case, owned_allocator, settings_for

    size, resolution, clips, steps = CONFIGS[args.config]
    started = time.perf_counter()
    case = build_case(size, resolution, clips, weight_dtype=args.weight_dtype)
    load_s = time.perf_counter() - started
    after_load = vm_hwm_bytes()
    with owned_allocator():
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        with torch.no_grad():
            parts = []
            for clip in case.pipeline.generate(case.pixels, case.face, case.audio, case.emotion, settings_for(steps=steps)):
                parts.append(clip.frames)
                del clip  # keep the frames only, as a caller that writes each clip does: the state goes with the clip
            frames = torch.cat(parts)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    peak = vm_hwm_bytes()  # before anything else runs in this process
    del case
    golden = golden_frames(args.weight_dtype)
    save_file({"video": frames.contiguous(), "golden": golden.contiguous()}, args.frames)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"peak_rss_mib": peak / 2**20, "peak_rss_after_load_mib": after_load / 2**20, "load_s": load_s,
                      "s_per_frame": wall / frames.shape[0], "cpu_s_per_frame": cpu / frames.shape[0],
                      "frames": frames.shape[0]}))


def golden_frames(weight_dtype: str):
    """The golden full-pipeline case's video with its weights stored as `weight_dtype` stores them."""
    import torch

    from memo_pipeline.layers import resolve_weight_dtype
    from precision_groups import generate_stored, stored_by_rule

    dtype = resolve_weight_dtype(weight_dtype)
    return generate_stored("golden", stored_by_rule(dtype) if dtype is not None else None, dtype).to(torch.float32)


def run_child(config: str, weight_dtype: str, threads: int, frames: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "_child", "--config", config, "--weight-dtype", weight_dtype,
               "--threads", str(threads), "--frames", str(frames)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT),
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if done.returncode != 0:
        raise RuntimeError(f"the {weight_dtype} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def deviation(frames, reference) -> dict:
    from precision import psnr

    value = psnr(frames, reference)
    # identical videos: PSNR null (JSON has no infinity)
    return {"max_abs": float((frames.double() - reference.double()).abs().max()),
            "psnr_db": None if value == float("inf") else value}


def _db(deviation_row: dict) -> str:
    return "identical" if deviation_row["psnr_db"] is None else f"{deviation_row['psnr_db']:.1f} dB"


def measure(config: str, weight_dtypes: list[str], runs: int, threads: int) -> dict:
    from safetensors.torch import load_file

    from configs import cached_checkpoint

    cached_checkpoint(CONFIGS[config][0], 0)  # written once, in its own process, before any measured run
    measured = {name: [] for name in weight_dtypes}
    videos = {}
    with tempfile.TemporaryDirectory(prefix="memo-memory-") as tmp:
        for i in range(runs):
            for name in weight_dtypes:  # alternating, so a busier moment does not land on one dtype only
                path = Path(tmp) / f"{name}.safetensors"
                result = run_child(config, name, threads, path)
                measured[name].append(result)
                videos[name] = load_file(str(path))
                print(f"{config} run {i + 1} {name:<10}: peak RSS {result['peak_rss_mib']:7.0f} MiB "
                      f"(after loading {result['peak_rss_after_load_mib']:.0f}), {result['s_per_frame']:.3f} s/frame, "
                      f"{result['cpu_s_per_frame']:.3f} CPU-s/frame, load {result['load_s']:.1f} s", flush=True)
    reference = videos.get("default")
    results = {}
    for name in weight_dtypes:
        runs_of = measured[name]
        row = {key: statistics.median(r[key] for r in runs_of)
               for key in ("peak_rss_mib", "peak_rss_after_load_mib", "s_per_frame", "cpu_s_per_frame", "load_s")}
        if reference is not None:
            row["video"] = deviation(videos[name]["video"], reference["video"])
            row["golden"] = deviation(videos[name]["golden"], reference["golden"])
        results[name] = row
    base = results.get("default")
    print(f"\n{config}: weight dtype vs the fp32 default ({runs} run(s) each, {threads} threads; median)")
    for name, row in results.items():
        line = f"  {name:<10} peak RSS {row['peak_rss_mib']:7.0f} MiB  {row['s_per_frame']:.3f} s/frame"
        if base is not None:
            row["s_per_frame_ratio"] = row["s_per_frame"] / base["s_per_frame"]
            row["cpu_s_per_frame_ratio"] = row["cpu_s_per_frame"] / base["cpu_s_per_frame"]
            line += (f" ({row['s_per_frame_ratio']:.2f}x wall, {row['cpu_s_per_frame_ratio']:.2f}x CPU)"
                     f"  video: max abs {row['video']['max_abs']:.4f} PSNR {_db(row['video'])}"
                     f"  golden: max abs {row['golden']['max_abs']:.4f} PSNR {_db(row['golden'])}")
        print(line)
    if config == "mid" and base is not None:
        for name, target in TARGETS_GB.items():
            if name in results:
                row = results[name]
                for unit, size in UNITS.items():
                    limit = target * size / 2**20
                    ok = row["peak_rss_mib"] <= limit and row["s_per_frame_ratio"] <= MAX_SLOWDOWN
                    print(f"  target {name}: peak RSS <= {target} {unit} ({limit:.0f} MiB) at <= {MAX_SLOWDOWN}x "
                          f"s/frame: {'met' if ok else 'NOT met'}")
    print(f"  {OFFLOAD_NOTE}")
    return {"config": config, "threads": threads, "runs": runs, "results": results, "offload": OFFLOAD_NOTE}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="measure", choices=["measure", "_child"])
    parser.add_argument("--config", default="mid", choices=sorted(CONFIGS), help="what to generate (default: mid)")
    parser.add_argument("--weight-dtypes", default=",".join(WEIGHT_DTYPES),
                        help="comma-separated; 'default' (fp32) is the reference of every comparison")
    parser.add_argument("--runs", type=int, default=1, help="runs of each weight dtype (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--weight-dtype", help=argparse.SUPPRESS)
    parser.add_argument("--frames", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode == "_child":
        child(args)
        return
    names = [n.strip() for n in args.weight_dtypes.split(",") if n.strip()]
    unknown = [n for n in names if n not in WEIGHT_DTYPES]
    if unknown or args.runs < 1:
        parser.error(f"unknown weight dtype(s) {', '.join(unknown)}; use {', '.join(WEIGHT_DTYPES)}" if unknown
                     else "--runs must be >= 1")
    print(json.dumps(measure(args.config, names, args.runs, args.threads)))


if __name__ == "__main__":
    main()
