"""GPU check of speed, memory and precision on full-size random-weight networks (see device_check.sh).

    python bench/device_check.py [--tiny] [--budget-s 360] [--out device_check.json]

Full size: the released network configs, an sd-vae-ft-mse-shaped VAE, 512x512, 20 steps,
16 frames per clip with 16 motion frames, CFG 3.5, SDPA. Every case has 2 clips and is built from
one seed, so each dtype sees the same weights and inputs. Parts, most important first, each timed
on its own:

- bf16, 2 clips (per-clip constants on) - the speed figure;
- the VAE decoding one clip in 1 call and in 16 calls (the per-device batch choice);
- fp32, 2 clips - the precision reference: max abs and PSNR of the whole bf16 and fp16 videos
  against it (what `bench/precision.py` computes with the motion memory in fp32);
- peak memory at bf16 compute with the layer weights stored in bf16 and in fp8_e4m3fn, each with
  and without model offload (`memo_pipeline.offload`; 2 clips of 2 steps: every step needs the
  same memory); the offloaded video must equal the other bit for bit;
- fp16, 2 clips; bf16, 1 clip with per-clip constants off - what the constants save.

Prints s/frame and the peak `torch.cuda.max_memory_allocated` of every run and writes one JSON
file. The check keeps to a time budget (`--budget-s`, 6 minutes): a part that would end past it is
skipped and the report says so (`Budget`). `--tiny` runs the same code with the tiny configs at
64 px and 2 steps, on the CPU when no GPU is there, without a budget: that is what CI runs. On the
CPU the peak-memory rows run (same-video check included) but report no peak: the figure is the
CUDA allocator's.
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


def generate(case, steps: int, device: torch.device, clip_constants: bool = True, max_clips: int = 0
             ) -> tuple[dict, torch.Tensor]:
    """One timed generation of `case` (all its clips, or the first `max_clips`): the run's figures
    and the whole video."""
    settings = settings_for(steps=steps, clip_constants=clip_constants)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    started = time.perf_counter()
    with torch.no_grad():
        video = torch.cat([clip.frames for clip in case.pipeline.generate(case.pixels.to(device), case.face, case.audio,
                                                                           case.emotion, settings, max_clips=max_clips)])
    sync(device)
    seconds = time.perf_counter() - started
    dtype = case.pipeline.models.dtype
    run = {"dtype": str(dtype).replace("torch.", ""), "clips": int(video.shape[0]) // 16, "clip_constants": clip_constants,
           "frames": int(video.shape[0]), "seconds": seconds, "s_per_frame": seconds / video.shape[0],
           "peak_gpu_mib": peak_mib(device), "finite": bool(torch.isfinite(video).all())}
    return run, video


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
    parser.add_argument("--budget-s", type=float, default=None,
                        help="time limit in seconds (default 360; none with --tiny, which must run every part): "
                             "parts that would end past it are skipped and reported as such")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with owned_allocator(str(device)):  # a CPU run is tuned as the command line tunes it; a GPU run is not
        return check(args, device)


DEFAULT_BUDGET_S = 360.0
"""The GPU check's 6 minutes (the lent machine's time is short and shared by every check)."""


class Budget:
    """The check's time limit (`--budget-s`, 6 minutes by default): a part that would end past it
    is skipped, and the report says so and why. A part's time is estimated from the first bf16
    run's seconds per frame and step (fp32 x `FP32_SLOWDOWN`), plus the time building a case took."""

    FP32_SLOWDOWN = 4.0  # without TF32 (switched off for the precision figure) fp32 runs ~4x bf16 on recent GPUs

    def __init__(self, seconds: float):
        self.seconds, self.started = seconds, time.perf_counter()
        self.per_frame_step: float | None = None  # bf16, measured by the first run
        self.build_s = 0.0

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    def estimate(self, frames: int, steps: int, dtype: torch.dtype, builds: int = 1) -> float:
        per = (self.per_frame_step or 0.0) * (self.FP32_SLOWDOWN if dtype == torch.float32 else 1.0)
        return per * frames * steps + builds * self.build_s

    def allows(self, what: str, report: dict, estimate: float) -> bool:
        if estimate <= self.left():
            return True
        reason = f"skipped: needs ~{estimate:.0f} s, {max(0.0, self.left()):.0f} s of the {self.seconds:.0f} s budget left"
        report.setdefault("skipped", {})[what] = reason
        print(f"{what}: {reason}", flush=True)
        return False


def timed_case(budget: Budget, size: str, resolution: int, dtype: torch.dtype, device: torch.device, **options):
    started = time.perf_counter()
    case = build_case(size, resolution, CLIPS, dtype=dtype, device=str(device), **options)
    budget.build_s = max(budget.build_s, time.perf_counter() - started)
    return case


CLIPS = 2
"""Every case has 2 clips, built from the same seed: the same weights and inputs in every dtype, so
each video compares with the fp32 one like for like (both clips, as bench/precision.py compares)."""

MEMORY_WEIGHT_DTYPES = ("bf16", "fp8_e4m3fn")
MEMORY_STEPS = 2
"""Steps per clip of the peak-memory runs: every step of a clip needs the same memory, and the
second clip (motion frames through the VAE and the reference net) peaks higher than the first."""


def memory_rows(budget: Budget, report: dict, size: str, resolution: int, device: torch.device) -> list[dict]:
    """Peak device memory of bf16 compute with the layer weights stored in each of
    `MEMORY_WEIGHT_DTYPES`, with and without model offload (`memo_pipeline.offload`), on one case
    built on the host. The two offload modes must give the same video bit for bit."""
    from memo_pipeline.layers import CastingLayers, resolve_weight_dtype, use_layers
    from memo_pipeline.loading import GENERATION_NETWORKS
    from memo_pipeline.offload import HOST, apply_offload

    from configs import tune_for_device

    frames = CLIPS * 16
    if not budget.allows("peak memory by weight dtype and offload", report,
                         budget.estimate(frames, MEMORY_STEPS, torch.bfloat16, builds=0) * 2 * len(MEMORY_WEIGHT_DTYPES)
                         + budget.build_s):
        return []
    case = timed_case(budget, size, resolution, torch.bfloat16, HOST, cpu_tuning=False)
    models, vae = case.pipeline.models, case.pipeline.vae
    for name in GENERATION_NETWORKS:
        use_layers(getattr(models, name), CastingLayers)
    rows = []
    for weight_dtype in MEMORY_WEIGHT_DTYPES:
        models.weight_dtype = resolve_weight_dtype(weight_dtype)
        models.to(HOST, torch.bfloat16)  # stores the layer weights in weight_dtype
        stored_mib = sum(t.numel() * t.element_size() for n in GENERATION_NETWORKS
                         for t in getattr(models, n).state_dict().values()) / 2**20
        videos = {}
        for offload in ("model", "none"):
            if offload == "model":
                group = apply_offload("model", device, models, vae)
            else:
                models.to(device)
                torch.nn.Module.to(vae.vae, device=device)
            tune_for_device(case.pipeline, device=str(device))
            run, videos[offload] = generate(case, MEMORY_STEPS, device)
            if offload == "model":
                group.remove()
            row = {"weight_dtype": weight_dtype, "offload": offload, "compute_dtype": "bfloat16", "clips": run["clips"],
                   "steps": MEMORY_STEPS, "stored_weights_mib": stored_mib, "peak_gpu_mib": run["peak_gpu_mib"],
                   "seconds": run["seconds"], "finite": run["finite"]}
            if device.type != "cuda":
                row["peak_note"] = "no GPU: the peak is a CUDA allocator figure; this row only checks the code path"
            rows.append(row)
        models.to(HOST)
        torch.nn.Module.to(vae.vae, device=HOST)
        for row in rows[-2:]:
            row["equal_to_no_offload"] = bool(torch.equal(videos["model"], videos["none"]))
        for row in rows[-2:]:
            memory = "n/a (CPU)" if row["peak_gpu_mib"] is None else f"{row['peak_gpu_mib']:.0f} MiB"
            print(f"peak memory, bf16 compute, {weight_dtype} weights ({stored_mib:.0f} MiB), offload {row['offload']}: "
                  f"{memory}; same video as without offload: {row['equal_to_no_offload']}", flush=True)
    return rows


def check(args, device: torch.device) -> dict:
    size, resolution, steps = ("tiny", 64, 2) if args.tiny else ("mid", 512, 20)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for the precision comparison
    torch.backends.cudnn.allow_tf32 = False
    budget = Budget(args.budget_s if args.budget_s is not None else math.inf if args.tiny else DEFAULT_BUDGET_S)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "size": size, "resolution": resolution, "steps": steps,
              "frames_per_clip": 16, "past_frames": 16, "guidance_scale": 3.5, "attention": "sdpa",
              "budget_s": None if math.isinf(budget.seconds) else budget.seconds, "runs": []}

    def record(run):
        report["runs"].append(run)
        memory = "" if run["peak_gpu_mib"] is None else f", peak {run['peak_gpu_mib']:.0f} MiB"
        print(f"{run['dtype']:<9} clips={run['clips']} constants={'on' if run['clip_constants'] else 'off'}: "
              f"{run['s_per_frame']:.3f} s/frame{memory}", flush=True)

    videos = {}
    case = timed_case(budget, size, resolution, torch.bfloat16, device)
    run, videos["bfloat16"] = generate(case, steps, device)
    budget.per_frame_step = run["seconds"] / (run["frames"] * steps)
    record(run)
    if budget.allows("vae", report, 4 * budget.estimate(16, 1, torch.bfloat16, builds=0)):
        report["vae"] = vae_batches(case.pipeline, 16, resolution, device)
    del case
    if budget.allows("float32 run", report, budget.estimate(CLIPS * 16, steps, torch.float32)):
        run, videos["float32"] = generate(timed_case(budget, size, resolution, torch.float32, device), steps, device)
        record(run)
    report["memory"] = memory_rows(budget, report, size, resolution, device)
    if budget.allows("float16 run", report, budget.estimate(CLIPS * 16, steps, torch.float16)):
        run, videos["float16"] = generate(timed_case(budget, size, resolution, torch.float16, device), steps, device)
        record(run)
    if budget.allows("bfloat16 run without clip constants", report, budget.estimate(16, steps, torch.bfloat16)):
        run, _ = generate(timed_case(budget, size, resolution, torch.bfloat16, device), steps, device,
                          clip_constants=False, max_clips=1)
        record(run)
    if "float32" in videos:
        reference = videos["float32"]
        report["deviation_from_fp32"] = {
            name: {"max_abs": float((video.double() - reference.double()).abs().max()), "psnr_db": psnr(video, reference)}
            for name, video in videos.items() if name != "float32"
        }
        for name, dev in report["deviation_from_fp32"].items():
            print(f"{name} vs float32 ({CLIPS} clips, same weights and inputs): max abs {dev['max_abs']:.4f}, "
                  f"PSNR {dev['psnr_db']:.1f} dB", flush=True)
    if "vae" in report:
        print("VAE decode of one clip: " + ", ".join(f"{k} {v:.3f}" for k, v in report["vae"].items()), flush=True)
    report["seconds"] = time.perf_counter() - budget.started
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
