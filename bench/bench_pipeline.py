"""Pipeline benchmarks on small random-weight models (CPU).

    python bench/bench_pipeline.py memory   # peak RSS for 2 and for 8 clips (each in a fresh process)
    python bench/bench_pipeline.py speed    # seconds per generated frame with and without the speedups

`memory` checks that memory does not grow with the number of clips: clips are streamed to an
mp4 and dropped, only the motion memory and the last motion frames are carried. `speed`
compares the official procedure (one VAE call per frame, reference image re-encoded and
re-featurised every clip, per-clip constants recomputed every step) with batched VAE calls, the
cached reference rows and the per-clip constants.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from configs import SMALL_VAE_WIDTHS, SMALL_WIDTHS, build_case, owned_allocator, settings_for  # noqa: E402
from memo_pipeline.video_io import VideoWriter  # noqa: E402

def generate(clips: int, resolution: int, steps: int, vae_batch: int, cache: bool, out: Path | None) -> float:
    case = build_case("small", resolution, clips, vae_batch=vae_batch)
    settings = settings_for(steps=steps, cache_reference=cache, clip_constants=cache)
    started = time.perf_counter()
    with torch.no_grad():
        clips_out = case.pipeline.generate(case.pixels, None, case.audio, 4, settings)
        if out is None:
            for _ in clips_out:
                pass
        else:
            with VideoWriter(out, 30) as writer:
                for clip in clips_out:
                    writer.write(clip.frames.permute(0, 2, 3, 1))
    return (time.perf_counter() - started) / case.frames


def child(args) -> None:
    with owned_allocator(), tempfile.TemporaryDirectory() as tmp:  # CPU-tuned, as the command line runs
        per_frame = generate(args.clips, args.resolution, args.steps, args.vae_batch, not args.no_cache, Path(tmp) / "v.mp4")
    print(json.dumps({"clips": args.clips, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds_per_frame": per_frame}))


def run_child(clips: int, resolution: int, steps: int, vae_batch: int, cache: bool) -> dict:
    command = [sys.executable, __file__, "_child", "--clips", str(clips), "--resolution", str(resolution),
               "--steps", str(steps), "--vae-batch", str(vae_batch)] + ([] if cache else ["--no-cache"])
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["memory", "speed", "_child"])
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args()
    if args.mode == "_child":
        child(args)
        return
    print(f"small config: UNet widths {SMALL_WIDTHS}, VAE widths {SMALL_VAE_WIDTHS}, {args.resolution} px, "
          f"16 frames/clip, 16 motion frames, {args.steps} steps, CFG 3.5, {torch.get_num_threads()} threads")
    if args.mode == "memory":
        # the peak of one process varies by a few percent with the heap layout: take the median of 3
        runs = {n: sorted(run_child(n, args.resolution, args.steps, args.vae_batch, True)["peak_rss_mb"] for _ in range(3))
                for n in (2, 8)}
        two, eight = runs[2][1], runs[8][1]
        growth = eight / two - 1
        print(f"peak RSS  2 clips: {two:.0f} MB (median of {', '.join(f'{v:.0f}' for v in runs[2])})")
        print(f"peak RSS  8 clips: {eight:.0f} MB (median of {', '.join(f'{v:.0f}' for v in runs[8])})  ({100 * growth:+.1f} %)")
        print("bounded" if growth <= 0.05 else "NOT bounded (more than 5 % growth)")
    else:
        plain = run_child(args.clips, args.resolution, args.steps, 1, False)
        fast = run_child(args.clips, args.resolution, args.steps, args.vae_batch, True)
        print(f"official procedure (per-frame VAE, nothing cached): {plain['seconds_per_frame']:.3f} s/frame")
        print(f"batched VAE ({args.vae_batch}) + cached reference rows + per-clip constants: {fast['seconds_per_frame']:.3f} s/frame "
              f"({plain['seconds_per_frame'] / fast['seconds_per_frame']:.2f}x)")


if __name__ == "__main__":
    main()
