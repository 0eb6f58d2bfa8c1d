"""Quality report on long videos: memory must not grow with the length (CPU).

    python bench/bench_quality.py                    # 1-minute and 10-minute videos
    python bench/bench_quality.py --minutes 1 3      # other lengths

For each length a synthetic talking-head video (128x128, 25 fps, H.264 + AAC speech-like audio,
written clip by clip) is analysed by `analyze_video` in a fresh process, which prints its peak
RSS (VmHWM), the RSS after 10 % / 50 % / 100 % of the frames and the highest RSS seen between
clips, the speed, and the sync proxy's lag (the synthetic mouth follows the sound 2 frames late). The face models are the
synthetic SCRFD / ArcFace stand-ins of the tests (real signatures, tiny graphs), so the numbers
measure the report's own machinery (decoding, alignment, mouth patches, envelope), not glintr100.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

FPS = 25
RATE = 16000
SIZE = 128
CHUNK = 250  # frames generated / written at a time
LAG = 2  # the sync proxy should find it


def _head(rng):
    """A still face drawn where the SCRFD stand-in of test_nodes_support reports its landmarks."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    base = np.full((SIZE, SIZE, 3), 0.35, np.float32)
    base[((x - 64) / 26.0) ** 2 + ((y - 50) / 32.0) ** 2 < 1] = (0.85, 0.68, 0.55)
    for ex in (56, 72):
        base[(x - ex) ** 2 + (y - 41.6) ** 2 < 6] = 0.1
    mouth = (abs(x - 64) <= 6) & (y >= 55) & (y <= 62)
    return base, mouth


def make_video(path: Path, minutes: float, seed: int = 0) -> int:
    from memo_pipeline.video_io import VideoWriter

    rng = np.random.default_rng(seed)
    frames = int(minutes * 60 * FPS)
    base, mouth = _head(rng)
    per_frame = RATE // FPS
    # a syllable envelope for the whole video: floats, a few per frame
    envelope = np.zeros(frames)
    position = 0
    while position < frames:
        width = int(rng.integers(3, 10))
        bump = np.sin(np.linspace(0, np.pi, width + 2)[1:-1]) ** 2 * rng.uniform(0.4, 1.0)
        envelope[position:position + width] = bump[: frames - position]
        position += width + int(rng.integers(0, 6))
    audio = np.repeat(envelope, per_frame) * 0.3 * rng.normal(size=frames * per_frame)
    shifted = np.concatenate([np.zeros(LAG), envelope])  # the mouth follows the sound LAG frames late
    with VideoWriter(path, FPS, audio=(audio.astype(np.float32), RATE), preset="ultrafast") as writer:
        for start in range(0, frames, CHUNK):
            count = min(CHUNK, frames - start)
            clip = np.repeat(base[None], count, axis=0)
            levels = shifted[start:start + count]
            clip[:, mouth] = (0.75 - 0.65 * levels)[:, None, None]
            clip += rng.normal(0, 0.01, size=clip.shape).astype(np.float32)
            writer.write(np.clip(clip, 0, 1))
    return frames


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux keeps getrusage's maxrss across exec, so a child started from a
    big parent would report the parent's size; VmHWM in /proc/self/status starts afresh at exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(video: Path, models: Path) -> None:
    import psutil
    import torch

    # The per-frame work is small and serial; on a shared 2-core machine torch's thread pool only adds
    # contention (tiny reductions in the image checks took 40 ms each with the default pool).
    torch.set_num_threads(1)

    from memo_pipeline.face import FaceAnalyzer
    from memo_pipeline.quality import analyze_video

    analyzer = FaceAnalyzer(models / "scrfd_10g_bnkps.onnx", models / "glintr100.onnx", providers=["CPUExecutionProvider"])
    base, _ = _head(np.random.default_rng(0))
    from memo_pipeline.video_io import read_video_info

    total = read_video_info(video)["frames"]
    process = psutil.Process()
    marks = {}
    highest = [0.0, 0]

    def on_chunk(done):
        rss = process.memory_info().rss / 2**20
        if rss > highest[0]:
            highest[:] = [rss, done]
        for fraction in (0.1, 0.5, 1.0):
            if fraction not in marks and done >= fraction * total:
                marks[fraction] = rss

    started = time.perf_counter()
    report = analyze_video(video, analyzer, base, frames_per_clip=16, on_chunk=on_chunk)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "frames": report.frames, "seconds": round(seconds, 1), "frames_per_s": round(report.frames / seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_mb_at_10_50_100_percent": [round(marks.get(f, float("nan")), 1) for f in (0.1, 0.5, 1.0)],
        "highest_rss_mb_between_clips": [round(highest[0], 1), f"after frame {highest[1]}"],
        "sync_lag_frames": report.sync.lag_frames, "sync_peak_r": round(report.sync.peak_r, 3),
        "identity_mean": report.identity_summary()["mean"],
    }))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--child", nargs=2, metavar=("VIDEO", "MODELS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return 0
    import test_nodes_support as support

    with tempfile.TemporaryDirectory(prefix="memo-bench-quality-") as tmp:
        tmp = Path(tmp)
        support.build_scrfd(tmp / "models" / "scrfd_10g_bnkps.onnx")
        support.build_arcface(tmp / "models" / "glintr100.onnx")
        for minutes in args.minutes:
            video = tmp / f"talking_{minutes:g}min.mp4"
            started = time.perf_counter()
            frames = make_video(video, minutes)
            made = time.perf_counter() - started
            out = subprocess.run([sys.executable, __file__, "--child", str(video), str(tmp / "models")],
                                 check=True, capture_output=True, text=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{minutes:g} min ({frames} frames, {video.stat().st_size / 2**20:.1f} MB mp4 made in {made:.0f} s): "
                  f"{json.dumps(result)}", flush=True)
            video.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
