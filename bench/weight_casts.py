"""How fast stored weights are cast to the compute dtype on this machine, per weight dtype.

    python bench/weight_casts.py [--elements 13000000] [--threads 2]

Prints, for each `layers.WEIGHT_DTYPES` storage dtype, how many elements per CPU-second torch's own
`.to(float32)` and `layers.cast_weight` (a bit-arithmetic path for float8_e4m3fn) convert; the best
of five runs. CPU time rather than wall time, so that other work on the machine matters less. A casting layer pays this once per forward, so for
the mid config (2.57 G parameters in the two UNets) divide 2.57e9 by the figure to get the seconds
one full pass of both networks spends casting.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memo_pipeline.layers import WEIGHT_DTYPES, cast_weight  # noqa: E402


def best_seconds(function, repeats: int = 5) -> float:
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        function()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=13_000_000, help="weight size (13 M = a 1280x10240 feed-forward)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = torch.randn(args.elements, generator=torch.Generator().manual_seed(0))
    print(f"{'weight dtype':12s} {'torch .to (G/CPU-s)':>20s} {'cast_weight (G/CPU-s)':>22s}")
    for name, dtype in WEIGHT_DTYPES.items():
        if dtype is None:
            continue
        stored = source.to(dtype)
        plain = best_seconds(lambda: stored.to(torch.float32))
        ours = best_seconds(lambda: cast_weight(stored, torch.float32, "cpu"))
        assert torch.equal(cast_weight(stored, torch.float32, "cpu"), stored.to(torch.float32))
        print(f"{name:12s} {args.elements / plain / 1e9:20.2f} {args.elements / ours / 1e9:22.2f}")


if __name__ == "__main__":
    main()
