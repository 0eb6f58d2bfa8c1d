"""How far bf16 and fp16 move the video from fp32, with the motion memory in fp32 or in the compute dtype.

    python bench/precision.py [--case golden|mid|tiny] [--dtypes bf16,fp16] [--json OUT]

`golden` runs the official full-pipeline fixture (its weights and inputs); `mid` and `tiny` use
`bench/configs.py` (2 clips, 128 px resp. 64 px). Every run starts from the same weights and the
same noise; each reduced-precision video is compared with the fp32 video: max absolute error and
PSNR on the [0, 1] frames.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from configs import owned_allocator  # noqa: E402
from memo_pipeline.loading import resolve_dtype  # noqa: E402

GOLDEN = HERE.parent / "tests" / "fixtures" / "golden" / "full_pipeline"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def golden_video(dtype: torch.dtype, memory_fp32: bool) -> torch.Tensor:
    from safetensors.torch import load_file

    from memo_pipeline.pipeline import WindowedAudio
    from memo_pipeline.parity.pipeline_case import build_fixture_pipeline, fixture_settings

    meta = json.loads(GOLDEN.with_suffix(".json").read_text())
    tensors = load_file(str(GOLDEN.with_suffix(".safetensors")))
    pipeline = build_fixture_pipeline(meta, tensors, cpu_tuning=True)  # a CPU run, tuned as the command line does
    pipeline.models.to(dtype=dtype)
    torch.nn.Module.to(pipeline.vae.vae, dtype=dtype)
    settings = fixture_settings(meta, memory_fp32=memory_fp32)
    audio = WindowedAudio(tensors["in.audio_emb"], num_frames=meta["loop"]["audio_length"])
    clips = pipeline.generate(tensors["in.pixel_values"].to(dtype), tensors["in.face_emb"], audio,
                              tensors["in.audio_emotion"], settings, noise=lambda k: tensors[f"in.clip{k}.init_noise"])
    return torch.cat([clip.frames for clip in clips])


def config_video(size: str, dtype: torch.dtype, memory_fp32: bool, steps: int) -> torch.Tensor:
    from configs import build_case, settings_for

    resolution = 128 if size == "mid" else 64
    case = build_case(size, resolution, clips=2, dtype=dtype)
    settings = settings_for(steps=steps, memory_fp32=memory_fp32)
    return torch.cat([clip.frames for clip in case.pipeline.generate(case.pixels.to(dtype), case.face, case.audio,
                                                                      case.emotion, settings)])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="golden", choices=["golden", "mid", "tiny"])
    parser.add_argument("--dtypes", default="bf16,fp16")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps for mid/tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    def video(dtype, memory_fp32):
        with torch.no_grad():
            if args.case == "golden":
                return golden_video(dtype, memory_fp32)
            return config_video(args.case, dtype, memory_fp32, args.steps)

    with owned_allocator():
        return _compare(args, video)


def _compare(args, video) -> dict:
    reference = video(torch.float32, True)
    results = []
    for name in args.dtypes.split(","):
        for memory_fp32 in (True, False):
            frames = video(resolve_dtype(name), memory_fp32)
            row = {"case": args.case, "dtype": name, "memory": "fp32" if memory_fp32 else name,
                   "max_abs": float((frames.double() - reference.double()).abs().max()), "psnr_db": psnr(frames, reference),
                   "finite": bool(torch.isfinite(frames).all())}
            results.append(row)
            print(f"{args.case}: {name:<5} memory {row['memory']:<5} max abs {row['max_abs']:.4f}  PSNR {row['psnr_db']:.1f} dB"
                  f"{'' if row['finite'] else '  NON-FINITE'}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return {"results": results}


if __name__ == "__main__":
    main()
