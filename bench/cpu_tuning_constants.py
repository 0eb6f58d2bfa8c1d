"""Re-derive the CPU tuning's constants by measuring each choice against its alternative (CPU).

    python bench/cpu_tuning_constants.py upsample   # MIN_POSITIONS: original vs phase upsampling per shape
    python bench/cpu_tuning_constants.py linear     # MKL vs oneDNN on the UNets' linear-layer shapes
    python bench/cpu_tuning_constants.py heap       # TUNED_MMAP_MAX / TUNED_TRIM_THRESHOLD: one diffusion-net
                                                    # step with glibc's settings vs inside tuned_allocator
    python bench/cpu_tuning_constants.py vae        # CPU_FRAMES_PER_CALL: VAE decode/encode of 16 frames
                                                    # in 1, 4 and 16 frames per call

Every figure is the best of `--repeat` runs with random weights (speed does not depend on their
values) on `--threads` threads; `heap` runs each setting in a fresh process so that one does not
inherit the other's heap. `--size small` uses the small benchmark widths (seconds), the default
`mid` the released widths (what the constants were chosen on). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def best_ms(run, repeat: int) -> float:
    run()  # warm-up (oneDNN primitives, the heap)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000 * min(times)


# n, channels, height, width: the upsamplers of the diffusion net (CFG x 16 frames = 32 rows) and of
# the VAE decoder (one frame per call) at 128 px, and the reference net's first-clip rows (2)
UPSAMPLE_SHAPES = [(32, 1280, 2, 2), (2, 1280, 4, 4), (2, 1280, 8, 8), (1, 512, 16, 16), (32, 1280, 4, 4),
                   (1, 512, 32, 32), (32, 640, 8, 8), (1, 256, 64, 64)]


def measure_upsample(args) -> dict:
    from diffusers.models.upsampling import Upsample2D

    from memo_pipeline.cpu_tuning import MIN_POSITIONS, nearest_upsample_conv

    rows = []
    with torch.no_grad():
        for n, c, h, w in UPSAMPLE_SHAPES:
            module = Upsample2D(c, use_conv=True, out_channels=c).eval()
            x = torch.randn(n, c, h, w)
            original = best_ms(lambda: module(x), args.repeat)
            phase = best_ms(lambda: nearest_upsample_conv(x, module.conv.weight, module.conv.bias), args.repeat)
            rows.append({"shape": [n, c, h, w], "positions": n * h * w, "original_ms": original, "phase_ms": phase})
            print(f"{n:>3} x {c:>4} ch at {h:>2}x{w:<2} ({n * h * w:>5} positions): original {original:7.1f} ms, "
                  f"phase {phase:7.1f} ms -> {'phase' if phase < original else 'original'}", flush=True)
    wins = [r["positions"] for r in rows if r["phase_ms"] < r["original_ms"]]
    losses = [r["positions"] for r in rows if r["phase_ms"] >= r["original_ms"]]
    print(f"phase wins from {min(wins) if wins else '-'} positions, loses up to {max(losses) if losses else '-'}; "
          f"MIN_POSITIONS = {MIN_POSITIONS}")
    return {"rows": rows, "MIN_POSITIONS": MIN_POSITIONS}


# rows, in features, out features: attention projections, GEGLU and feed-forward out of the three
# cross-attention widths at 128 px (32 rows x 16x16 / 8x8 / 4x4 tokens), and the 768-wide audio tokens
LINEAR_SHAPES = [(8192, 320, 320), (8192, 320, 2560), (8192, 1280, 320), (2048, 640, 640), (2048, 640, 5120),
                 (2048, 2560, 640), (512, 1280, 1280), (512, 1280, 10240), (512, 5120, 1280), (8192, 768, 320)]


def measure_linear(args) -> dict:
    """F.linear (MKL for float32) against the oneDNN op that tuned linear layers call."""
    onednn_linear = torch.ops.mkldnn._linear_pointwise
    rows = []
    with torch.no_grad():
        for m, k, n in LINEAR_SHAPES:
            layer = torch.nn.Linear(k, n)
            x = torch.randn(m, k)
            mkl = best_ms(lambda: torch.nn.functional.linear(x, layer.weight, layer.bias), args.repeat)
            onednn = best_ms(lambda: onednn_linear(x, layer.weight, layer.bias, "none", [], ""), args.repeat)
            flop = 2 * m * k * n
            rows.append({"shape": [m, k, n], "mkl_gflops": flop / mkl / 1e6, "onednn_gflops": flop / onednn / 1e6})
            print(f"{m:>5} x {k:>4} -> {n:>5}: MKL {flop / mkl / 1e6:6.1f} GFLOP/s, oneDNN {flop / onednn / 1e6:6.1f} GFLOP/s",
                  flush=True)
    return {"rows": rows}


def heap_child(args) -> None:
    """One process: the diffusion net of `--size` with the CPU tuning, one memory-writing step and
    `--repeat` reading steps at 128 px; inside `tuned_allocator` when `--tuned-heap`."""
    from contextlib import nullcontext

    from bench_diffusion_step import fake_reference_features
    from configs import _networks, random_model

    from memo_pipeline.cpu_tuning import apply_cpu_tuning, tuned_allocator
    from memo_pipeline.models.clip_constants import ClipConstants
    from memo_pipeline.models.diffusion_net import DiffusionNet
    from memo_pipeline.models.motion_memory import MotionMemory

    torch.set_num_threads(args.threads)
    with tuned_allocator() if args.tuned_heap else nullcontext(), torch.no_grad():
        config = _networks(args.size)[0]["diffusion_net"]
        model = random_model(DiffusionNet, config, seed=0)
        apply_cpu_tuning(model)
        latent, frames, batch = 16, 16, 2
        features = fake_reference_features(config, batch, 1 + frames, latent, torch.float32)
        sample = torch.randn(batch, 4, frames, latent, latent)
        face = torch.randn(batch, 4, config["cross_attention_dim"])
        audio = torch.randn(batch, frames, 32, config["audio_attention_dim"])
        emotion, uc_mask = torch.tensor([9, 4]), torch.arange(batch * frames) < frames
        memory, constants = MotionMemory(), ClipConstants()
        model(sample, features, torch.tensor(1000.0), face, audio, emotion, memory, "reset", uc_mask, constants=constants)
        times, faults = [], []
        for _ in range(args.repeat):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            started = time.perf_counter()
            model(sample, features, torch.tensor(500.0), face, audio, emotion, memory, "read", uc_mask, constants=constants)
            times.append(time.perf_counter() - started)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"step_s": min(times), "page_faults": min(faults),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure_heap(args) -> dict:
    from memo_pipeline.cpu_tuning import TUNED_MMAP_MAX, TUNED_TRIM_THRESHOLD

    result = {}
    for name, flag in (("glibc", []), ("tuned", ["--tuned-heap"])):
        command = [sys.executable, __file__, "_heap_child", "--size", args.size, "--repeat", str(args.repeat),
                   "--threads", str(args.threads)] + flag
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        result[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{args.size} diffusion-net step, heap {name:<5}: {result[name]['step_s']:.2f} s, "
              f"{result[name]['page_faults']} page faults, peak RSS {result[name]['peak_rss_mib']:.0f} MiB", flush=True)
    print(f"tuned_allocator: M_MMAP_MAX {TUNED_MMAP_MAX}, M_TRIM_THRESHOLD {TUNED_TRIM_THRESHOLD}")
    return result


def measure_vae(args) -> dict:
    from diffusers import AutoencoderKL

    from configs import SD_VAE, SMALL_VAE_WIDTHS, random_model

    from memo_pipeline.cpu_tuning import apply_cpu_tuning
    from memo_pipeline.tiny import TINY_VAE
    from memo_pipeline.vae import CPU_FRAMES_PER_CALL, DiffusersVAE

    config = dict(SD_VAE) if args.size == "mid" else dict(TINY_VAE, block_out_channels=SMALL_VAE_WIDTHS, norm_num_groups=32)
    vae = DiffusersVAE(random_model(AutoencoderKL, config, seed=9, scale=0.5))
    apply_cpu_tuning(vae)
    frames = torch.rand(16, 3, args.resolution, args.resolution) * 2 - 1
    latents = torch.randn(16, 4, args.resolution // 8, args.resolution // 8)
    rows = []
    for per_call in (1, 4, 16):
        vae.batch_size = per_call
        decode = best_ms(lambda: vae.decode(latents), args.repeat) / 1000
        encode = best_ms(lambda: vae.encode(frames), args.repeat) / 1000
        rows.append({"frames_per_call": per_call, "decode_s": decode, "encode_s": encode})
        print(f"16 frames at {args.resolution} px, {per_call:>2} per call: decode {decode:.2f} s, encode {encode:.2f} s",
              flush=True)
    print(f"CPU_FRAMES_PER_CALL = {CPU_FRAMES_PER_CALL}")
    return {"rows": rows, "CPU_FRAMES_PER_CALL": CPU_FRAMES_PER_CALL}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["upsample", "linear", "heap", "vae", "_heap_child"])
    parser.add_argument("--size", default="mid", choices=["small", "mid"], help="network widths for heap and vae")
    parser.add_argument("--resolution", type=int, default=128, help="frame size for vae")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tuned-heap", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.what == "_heap_child":
        heap_child(args)
        return
    torch.set_num_threads(args.threads)
    measure = {"upsample": measure_upsample, "linear": measure_linear, "heap": measure_heap, "vae": measure_vae}
    print(json.dumps({args.what: measure[args.what](args), "threads": args.threads}))


if __name__ == "__main__":
    main()
