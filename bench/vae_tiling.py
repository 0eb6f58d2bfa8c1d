"""How far the VAE's spatial tiling (frames above 512 px) moves its output from untiled, and its cost.

    python bench/vae_tiling.py [--vae sd|tiny] [--sizes 768,1024] [--threads N] [--json OUT]

`sd`: an AutoencoderKL of sd-vae-ft-mse's architecture (`configs.SD_VAE`), `tiny`: the test VAE
(`memo_pipeline.tiny.TINY_VAE`), each with seeded random weights, float32 on the CPU. For every
size, one drawn portrait (`cli.make_test_portrait`) is encoded with tiling off and with the
default (`memo_pipeline.vae.TILE_SIZE` / `TILE_OVERLAP`), and two latents are decoded both ways:
the portrait's untiled latents and N(0, 1) noise. Figures: max absolute difference and PSNR, on
the [0, 1] frames for decode (peak 1) and on the scaled latents for encode (peak: the untiled
latents' max - min), plus the seconds of each call. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from configs import SD_VAE, random_model  # noqa: E402
from memo_pipeline.tiny import TINY_VAE, randomize  # noqa: E402
from memo_pipeline.vae import TILE_OVERLAP, TILE_SIZE, DiffusersVAE  # noqa: E402


def deviation(tiled: torch.Tensor, untiled: torch.Tensor, peak: float) -> dict:
    """Max absolute difference and PSNR (dB, against `peak`) of `tiled` from `untiled`."""
    diff = tiled.double() - untiled.double()
    mse = float((diff ** 2).mean())
    return {"max_abs": float(diff.abs().max()),
            "psnr_db": math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)}


def portrait(size: int) -> torch.Tensor:
    """A drawn face (no real person) as one `(1, 3, size, size)` frame in [-1, 1]."""
    import numpy as np
    from PIL import Image

    from memo_pipeline.cli import make_test_portrait

    with tempfile.TemporaryDirectory() as folder:
        picture = np.asarray(Image.open(make_test_portrait(Path(folder) / "p.png", size)).convert("RGB"))
    return torch.from_numpy(picture.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def timed(function, *args):
    start = time.perf_counter()
    out = function(*args)
    return out, time.perf_counter() - start


def build_vae(name: str):
    """The `sd` or `tiny` AutoencoderKL with seeded random weights (`tiny`: as tests/test_vae_tiling.py draws it)."""
    from diffusers import AutoencoderKL

    if name == "tiny":
        return randomize(AutoencoderKL(**TINY_VAE), 9, scale=0.5).eval()
    return random_model(AutoencoderKL, SD_VAE, seed=9, scale=0.5).eval()


def measure(model, sizes: list[int]) -> dict:
    tiled, untiled = DiffusersVAE(model, tiling="auto"), DiffusersVAE(model, tiling="off")
    results = {}
    for size in sizes:
        frames = portrait(size)
        reference, untiled_s = timed(untiled.encode, frames)
        latents, tiled_s = timed(tiled.encode, frames)
        peak = float(reference.max() - reference.min())
        row = results[str(size)] = {}
        row["encode"] = report(size, "encode", {**deviation(latents, reference, peak),
                                                "untiled_s": untiled_s, "tiled_s": tiled_s})
        noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(size))
        for name, z in (("decode_portrait", reference), ("decode_noise", noise)):
            exact, untiled_s = timed(untiled.decode, z)
            split, tiled_s = timed(tiled.decode, z)
            row[name] = report(size, name, {**deviation(split, exact, 1.0), "untiled_s": untiled_s, "tiled_s": tiled_s})
    return results


def report(size: int, name: str, figures: dict) -> dict:
    print(f"{size:5d} px  {name:16s} max abs {figures['max_abs']:.4f}  PSNR {figures['psnr_db']:6.2f} dB  "
          f"untiled {figures['untiled_s']:6.1f} s  tiled {figures['tiled_s']:6.1f} s", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", choices=["sd", "tiny"], default="sd")
    parser.add_argument("--sizes", default="768,1024", help="frame sides in pixels, comma-separated (multiples of 8)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the JSON object here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(f"VAE '{args.vae}', tile {TILE_SIZE} px, overlap {TILE_OVERLAP} px, float32 CPU", flush=True)
    results = measure(build_vae(args.vae), sizes)
    summary = {"vae": args.vae, "tile_size": TILE_SIZE, "tile_overlap": TILE_OVERLAP, "results": results}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
