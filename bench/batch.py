"""Batch throughput: rows per hour in this process vs on Ray (overhead), and 2 workers x 1 thread vs
1 worker x 2 threads, with the small benchmark networks (bench/configs.py) saved as a checkpoint.

    python bench/batch.py [--rows 4] [--seconds 0.5] [--resolution 64] [--steps 2]

Each configuration runs the same manifest into its own output folder through the `batch` command
(models loaded once per process / per worker, as a user's run). The local Ray cluster is started
once before the timed runs, so its start-up (seconds, paid once per session) is not counted; the
workers' start (process + model load) is, as the in-process run's model load is.
"""

from __future__ import annotations

import argparse
import json
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.5, help="audio length of each row")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration (the fastest counts)")
    args = parser.parse_args(argv)

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
        connect(None)  # the local cluster, once
        runs = [("in-process, 2 threads", [], 2), ("Ray, 1 worker x 2 threads", ["--ray", "--workers", "1",
                                                                              "--threads-per-worker", "2"], None),
                ("Ray, 2 workers x 1 thread", ["--ray", "--workers", "2", "--threads-per-worker", "1"], None)]
        best: dict[str, float] = {}
        for round_ in range(args.rounds):  # interleaved, so a busy spell of the machine hits every configuration
            order = runs if round_ % 2 == 0 else runs[::-1]
            for name, extra, threads in order:
                out = tmp / f"out-{round_}-{runs.index((name, extra, threads))}"
                torch.set_num_threads(threads or 2)
                started = time.perf_counter()
                code = cli_main([*base, "--out-dir", str(out), "--report", str(tmp / "report.json"), *extra])
                seconds = time.perf_counter() - started
                report = json.loads((tmp / "report.json").read_text())
                if code != 0:
                    print(f"{name}: exit code {code}: {report.get('counts')}", file=sys.stderr)
                    return 1
                print(f"round {round_ + 1}: {name}: {seconds:.1f} s", flush=True)
                best[name] = min(seconds, best.get(name, seconds))
        figures = [(name, best[name], args.rows * 3600 / best[name]) for name, _, _ in runs]
        print(f"\n{args.rows} rows of {args.seconds:g} s audio, small config, {args.resolution} px, {args.steps} steps, "
              f"{torch.get_num_threads()}-thread host")
        for name, seconds, per_hour in figures:
            print(f"{name:30s} {seconds:7.1f} s   {per_hour:7.0f} rows/hour")
        overhead = figures[1][1] / figures[0][1] - 1
        print(f"Ray overhead (1 worker vs in-process): {100 * overhead:+.1f} %")
        print(f"2 workers x 1 thread vs 1 worker x 2 threads: {figures[1][1] / figures[2][1]:.2f}x the rows per hour")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
