"""GPU check of speed, memory and precision on full-size random-weight networks (see device_check.sh).

    python bench/device_check.py [--tiny] [--out device_check.json]

Full size: the released network configs, an sd-vae-ft-mse-shaped VAE, 512x512, 20 steps,
16 frames per clip with 16 motion frames, CFG 3.5, SDPA. Runs, each timed on its own:

- bf16, 2 clips (per-clip constants on) - the speed figure;
- bf16, 1 clip, per-clip constants off - what the constants save;
- fp16, 1 clip; fp32, 1 clip - precision: max abs and PSNR of the first clip against fp32;
- the VAE decoding one clip in 1 call and in 16 calls (the per-device batch choice).

Prints s/frame and the peak `torch.cuda.max_memory_allocated` of every run and writes one JSON
file. `--tiny` runs the same code with the tiny configs at 64 px and 2 steps, on the CPU when no
GPU is there, in seconds: that is what CI runs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from configs import build_case, owned_allocator, settings_for  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def generate(size: str, resolution: int, clips: int, steps: int, dtype: torch.dtype, device: torch.device,
             clip_constants: bool = True) -> tuple[dict, torch.Tensor, object]:
    case = build_case(size, resolution, clips, dtype=dtype, device=str(device))
    settings = settings_for(steps=steps, clip_constants=clip_constants)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    started = time.perf_counter()
    with torch.no_grad():
        videos = [clip.frames for clip in case.pipeline.generate(case.pixels.to(device), case.face, case.audio,
                                                                  case.emotion, settings)]
    sync(device)
    seconds = time.perf_counter() - started
    video = torch.cat(videos)
    run = {"dtype": str(dtype).replace("torch.", ""), "clips": clips, "clip_constants": clip_constants,
           "frames": int(video.shape[0]), "seconds": seconds, "s_per_frame": seconds / video.shape[0],
           "peak_gpu_mib": peak_mib(device), "finite": bool(torch.isfinite(video).all())}
    return run, videos[0], case.pipeline


def vae_batches(pipeline, frames: int, resolution: int, device: torch.device) -> dict:
    """Seconds to decode one clip of latents in one call and frame by frame."""
    vae = pipeline.vae
    latents = torch.randn(frames, 4, resolution // 8, resolution // 8, device=device, dtype=vae.dtype)
    result = {}
    for batch in (frames, 1):
        vae.batch_size = batch
        vae.decode(latents[:1])  # warm-up
        sync(device)
        started = time.perf_counter()
        vae.decode(latents)
        sync(device)
        result[f"decode_{batch}_per_call_s"] = time.perf_counter() - started
    vae.batch_size = None
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs, 64 px, 2 steps (seconds, CPU is fine)")
    parser.add_argument("--out", default="device_check.json")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with owned_allocator(str(device)):  # a CPU run is tuned as the command line tunes it; a GPU run is not
        return check(args, device)


def check(args, device: torch.device) -> dict:
    size, resolution, steps = ("tiny", 64, 2) if args.tiny else ("mid", 512, 20)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for the precision comparison
    torch.backends.cudnn.allow_tf32 = False
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "size": size, "resolution": resolution, "steps": steps,
              "frames_per_clip": 16, "past_frames": 16, "guidance_scale": 3.5, "attention": "sdpa", "runs": []}

    def record(run):
        report["runs"].append(run)
        memory = "" if run["peak_gpu_mib"] is None else f", peak {run['peak_gpu_mib']:.0f} MiB"
        print(f"{run['dtype']:<9} clips={run['clips']} constants={'on' if run['clip_constants'] else 'off'}: "
              f"{run['s_per_frame']:.3f} s/frame{memory}", flush=True)

    run, bf16_first, pipeline = generate(size, resolution, 2, steps, torch.bfloat16, device)
    record(run)
    report["vae"] = vae_batches(pipeline, 16, resolution, device)
    del pipeline
    run, _, _ = generate(size, resolution, 1, steps, torch.bfloat16, device, clip_constants=False)
    record(run)
    run, fp16_first, _ = generate(size, resolution, 1, steps, torch.float16, device)
    record(run)
    run, fp32_first, _ = generate(size, resolution, 1, steps, torch.float32, device)
    record(run)
    report["deviation_from_fp32_first_clip"] = {
        name: {"max_abs": float((video.double() - fp32_first.double()).abs().max()), "psnr_db": psnr(video, fp32_first)}
        for name, video in (("bfloat16", bf16_first), ("float16", fp16_first))
    }
    for name, dev in report["deviation_from_fp32_first_clip"].items():
        print(f"{name} vs float32 (first clip): max abs {dev['max_abs']:.4f}, PSNR {dev['psnr_db']:.1f} dB", flush=True)
    print("VAE decode of one clip: " + ", ".join(f"{k} {v:.3f}" for k, v in report["vae"].items()), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
