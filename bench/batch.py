"""Batch throughput: rows per hour in this process vs on Ray (overhead), and 2 workers x 1 thread vs
1 worker x 2 threads, with the small benchmark networks (bench/configs.py) saved as a checkpoint.

    python bench/batch.py [--rows 4] [--seconds 0.5] [--resolution 64] [--steps 2]

Each configuration runs the same manifest into its own output folder through the `batch` command
(models loaded once per process / per worker, as a user's run), in rounds whose order alternates so
that a busy spell of the machine hits every configuration; the fastest round of each counts.

What is counted, the same way on both sides: the `batch` command's wall time from the call to its
return (manifest checks, start-up, rows, summary). Start-up (from the report) is what comes before
the first row: in this process the model load (this process has imported the library already); on
Ray the worker's start: a new process, its imports (torch, diffusers, the library), the models
check and the model load. The rest, divided by the rows, is the per-row figure. Not counted: the
local Ray cluster's own start (`ray.init`), paid once per command when `--ray` has no cluster to
join; it is printed on its own line.

Where the overhead came from, measured on the 2-core VM (psutil, small config, 128 px, 2 steps):
- Ray lowers every worker process to nice 15 (its `worker_niceness`, applied by the worker itself
  at start), so any other runnable process, Ray's daemons and the driver included, preempted the
  rows' two threads. `cluster.WORKER_ENV` now runs the batch workers at the command's priority.
  The worker's CPU seconds per row equal the in-process run's (46 CPU s for 2 rows of 2 s with
  imports and load, vs 44 in-process without imports): the rows do no extra work on Ray.
- The worker start: a fresh Python process imports torch, diffusers and the library before its
  models check and load, which the in-process run has done already (the start-up column).
- Ray's own processes (raylet, GCS server, dashboard agent and head, runtime-env agent, log
  monitor, autoscaler monitor) keep running beside the worker: idle, 1.31 CPU s per 30 s with
  Ray's defaults, 0.62 with `cluster.LOCAL_CLUSTER_ENV` (no prestarted idle workers, no metrics),
  i.e. about 2 % of one core, 1 % of this machine; during a run somewhat more (the log monitor
  and raylet serve the worker). This is Ray's fixed cost, outside this code; the last lines print
  it for the run measured.
- OpenMP thread teams: torch's OpenMP (libgomp) lets a waiting thread spin GOMP_SPINCOUNT times
  (300000 by default) before it sleeps, but only a short throttled spin once it manages more
  threads than there are CPUs. Each thread that starts parallel regions gets its own team, so a
  worker that loaded its models in its main thread and ran rows in a second thread (a threaded
  actor, so that `stop` could reach it while busy) managed one team too many: every parallel
  region then woke sleeping threads. The same generation (small config, 128 px, 2 steps, 2 clips)
  took 4.85 s in the main thread after a load there and 6.91 s in a second thread (+42 %). The
  workers now run one call at a time, rows in their main thread, and Ctrl-C reaches them through a
  named actor created only when needed (`cluster.StopFlag`). On a loaded machine (load average
  9-15) the long spin of the single team is itself costly, for both sides alike;
  `--gomp-spincount 1000` runs both with the short spin.
- So the start-up is what remains of Ray's cost: about 6.5 s (a new process, torch and
  diffusers imports, models check; the local cluster's own start comes on top unless one is
  running), i.e. about 5 % of a 140 s batch of 6 rows, less for longer batches; per row the two
  sides are within the machine's noise. Three alternating rounds of 6 rows (small config, 128 px,
  2 steps): in-process 135.8 / 145.6 / 142.7 s, Ray with 1 worker 137.8 / 143.1 / 136.6 s
  (fastest +0.6 %, means -1.6 %). 2 workers x 1 thread did 1.31x the rows per hour of 1 worker x
  2 threads (129.7 s vs 169.8 s, one round).
The figures are only meaningful on an otherwise idle machine; each round prints the load average
so that runs on a busy one can be told apart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def write_small_checkpoint(folder: Path) -> dict[str, Path]:
    """The small benchmark networks (random, seeded) in the released folder layout."""
    from diffusers import AutoencoderKL

    from configs import _networks, random_model
    from memo_pipeline.loading import COMPONENTS, MemoModels
    from memo_pipeline.tiny import write_tiny_wav2vec

    configs, vae_config = _networks("small")
    models = {name: random_model(cls, configs[name], i) for i, (name, (_, cls, _)) in enumerate(COMPONENTS.items())}
    MemoModels(**models).save(folder / "memo")
    random_model(AutoencoderKL, vae_config, 9, 0.5).save_pretrained(folder / "vae")
    return {"memo": folder / "memo", "vae": folder / "vae", "wav2vec2": write_tiny_wav2vec(folder / "wav2vec2")}


def ray_processes_cpu(worker_title: str = "ray::BatchWorker") -> float:
    """CPU seconds used so far by this process's Ray children (daemons and idle workers), not by
    the batch workers (their time is the rows'); 0 without psutil."""
    try:
        import psutil
    except ImportError:
        return 0.0
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if " ".join(child.cmdline()).startswith(worker_title):
                continue
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:  # a process that ended since the listing
            continue
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.5, help="audio length of each row")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration (the fastest counts)")
    parser.add_argument("--skip-two-workers", action="store_true", help="only in-process vs Ray with 1 worker")
    parser.add_argument("--gomp-spincount", type=int,
                        help="GOMP_SPINCOUNT for both sides (set before torch loads; the Ray daemons and workers "
                             "inherit it): 1000 gives the in-process rows the short spin the worker's rows get")
    args = parser.parse_args(argv)
    if args.gomp_spincount is not None:
        if "torch" in sys.modules:
            parser.error("--gomp-spincount must be set before torch is imported (run the script directly)")
        os.environ["GOMP_SPINCOUNT"] = str(args.gomp_spincount)

    import torch

    from memo_pipeline.batch.cluster import connect
    from memo_pipeline.cli import main as cli_main, make_test_portrait, make_test_tone

    with tempfile.TemporaryDirectory(prefix="memo-bench-batch-") as tmp:
        tmp = Path(tmp)
        bundle = write_small_checkpoint(tmp / "models")
        portrait = make_test_portrait(tmp / "portrait.png", 128)
        lines = ["image,audio,seed"]
        for i in range(args.rows):
            make_test_tone(tmp / f"tone{i}.wav", args.seconds)
            lines.append(f"{portrait},{tmp / f'tone{i}.wav'},{i}")
        manifest = tmp / "jobs.csv"
        manifest.write_text("\n".join(lines) + "\n")
        base = ["batch", str(manifest), "--checkpoint", str(bundle["memo"]), "--vae", str(bundle["vae"]),
                "--wav2vec", str(bundle["wav2vec2"]), "--allow-no-face", "--resolution", str(args.resolution),
                "--steps", str(args.steps), "--no-progress"]
        started = time.perf_counter()
        connect(None)  # the local cluster, once
        cluster_start = time.perf_counter() - started
        runs = [("in-process, 2 threads", [], 2), ("Ray, 1 worker x 2 threads", ["--ray", "--workers", "1",
                                                                              "--threads-per-worker", "2"], None),
                ("Ray, 2 workers x 1 thread", ["--ray", "--workers", "2", "--threads-per-worker", "1"], None)]
        if args.skip_two_workers:
            runs = runs[:2]
        best: dict[str, dict] = {}
        for round_ in range(args.rounds):  # interleaved, so a busy spell of the machine hits every configuration
            order = runs if round_ % 2 == 0 else runs[::-1]
            for name, extra, threads in order:
                out = tmp / f"out-{round_}-{runs.index((name, extra, threads))}"
                torch.set_num_threads(threads or 2)
                ray_cpu = ray_processes_cpu()
                started = time.perf_counter()
                code = cli_main([*base, "--out-dir", str(out), "--report", str(tmp / "report.json"), *extra])
                seconds = time.perf_counter() - started
                if code != 0:
                    report = tmp / "report.json"
                    counts = json.loads(report.read_text()).get("counts") if report.is_file() else "no report"
                    print(f"{name}: exit code {code}: {counts}", file=sys.stderr)
                    return 1
                report = json.loads((tmp / "report.json").read_text())
                (tmp / "report.json").unlink()
                figure = {"seconds": seconds, "startup": report["startup"]["seconds"],
                          "model_load": report["startup"]["model_load_seconds"],
                          "ray_cpu": ray_processes_cpu() - ray_cpu}
                print(f"round {round_ + 1}: {name}: {seconds:.1f} s (start-up {figure['startup']:.1f} s, "
                      f"Ray's processes {figure['ray_cpu']:.1f} CPU s; load average {os.getloadavg()[0]:.1f})",
                      flush=True)
                if name not in best or seconds < best[name]["seconds"]:
                    best[name] = figure
        print(f"\n{args.rows} rows of {args.seconds:g} s audio, small config, {args.resolution} px, {args.steps} steps, "
              f"{torch.get_num_threads()}-thread host; local Ray cluster start (not counted below): {cluster_start:.1f} s")
        print(f"{'':30s} {'total':>8s} {'start-up':>9s} {'per row':>8s} {'rows/hour':>10s} {'Ray CPU':>8s}")
        for name, _, _ in runs:
            f = best[name]
            per_row = (f["seconds"] - f["startup"]) / args.rows
            print(f"{name:30s} {f['seconds']:7.1f}s {f['startup']:8.1f}s {per_row:7.2f}s "
                  f"{args.rows * 3600 / f['seconds']:10.0f} {f['ray_cpu']:7.1f}s")
        local, ray1 = best[runs[0][0]], best[runs[1][0]]
        local_row = (local["seconds"] - local["startup"]) / args.rows
        ray_row = (ray1["seconds"] - ray1["startup"]) / args.rows
        print(f"Ray overhead (1 worker vs in-process): {100 * (ray1['seconds'] / local['seconds'] - 1):+.1f} % in all; "
              f"start-up {ray1['startup'] - local['startup']:+.1f} s (worker process, imports and models check "
              f"{ray1['startup'] - ray1['model_load']:.1f} s; model load {ray1['model_load']:.1f} s vs "
              f"{local['model_load']:.1f} s); per row {100 * (ray_row / local_row - 1):+.1f} % "
              f"({ray_row:.2f} s vs {local_row:.2f} s)")
        print(f"Ray's own processes during the 1-worker run: {ray1['ray_cpu']:.1f} CPU s = "
              f"{100 * ray1['ray_cpu'] / ray1['seconds']:.1f} % of one core")
        if len(runs) > 2:
            print(f"2 workers x 1 thread vs 1 worker x 2 threads: {ray1['seconds'] / best[runs[2][0]]['seconds']:.2f}x "
                  "the rows per hour")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
