"""Throughput and peak memory of paste_back: 512x512 generated frames into a Full-HD picture.

    python bench/bench_face_paste.py [--frames 240] [--chunk 16] [--color-match]

Frames come from a generator so that only the chunk in flight exists; the peak resident memory
growth printed at the end should stay near one output chunk (chunk x 1920 x 1080 x 3 x 4 bytes)
whatever the frame count.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from memo_pipeline.face import Face, crop_face, paste_back  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--color-match", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    original = rng.random((1080, 1920, 3), dtype=np.float32)
    crop, info = crop_face(original, Face(box=(860, 300, 1060, 540), score=1.0))
    process = psutil.Process()
    base = process.memory_info().rss
    peak = base

    def frames():
        for _ in range(args.frames):
            yield crop

    start = time.perf_counter()
    count = 0
    for chunk in paste_back(frames(), info, original, color_match=args.color_match, chunk_size=args.chunk):
        count += chunk.shape[0]
        peak = max(peak, process.memory_info().rss)
    elapsed = time.perf_counter() - start
    chunk_mb = args.chunk * 1080 * 1920 * 3 * 4 / 2**20
    print(
        f"{count} frames, crop {info.size}px -> 1920x1080, chunk {args.chunk}, torch threads {torch.get_num_threads()}: "
        f"{count / elapsed:.1f} frames/s; RSS growth {(peak - base) / 2**20:.0f} MiB (one output chunk is {chunk_mb:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
