"""The README's table of planned peak device memory: `python bench/memory_table.py [--json]`.

For the released networks at 256 / 512 / 768 px, every weight dtype and offload mode, with the
512 config's other settings (16 frames per clip, 16 past frames, 20 steps, CFG 3.5, bf16 compute,
a CUDA device), from `memo_pipeline.memory_plan` (shapes only: no weights, no GPU needed). Prints a
markdown table (rows: weight dtype x offload, columns: resolution), or every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESOLUTIONS = (256, 512, 768)


def main(argv=None) -> int:
    from memo_pipeline.layers import WEIGHT_DTYPES
    from memo_pipeline.memory_plan import OFFLOAD_MODES, PlanRequest, gb, plan_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    figures = {}
    for weight_dtype in WEIGHT_DTYPES:
        for offload in OFFLOAD_MODES:
            for resolution in RESOLUTIONS:
                request = PlanRequest(resolution=resolution, frames_per_clip=16, past_frames=16, steps=20, cfg=3.5,
                                      dtype="bf16", weight_dtype=weight_dtype, offload=offload, device="cuda")
                figures[(weight_dtype, offload, resolution)] = plan_memory(request).peak_device_bytes
    if args.json:
        print(json.dumps([{"weight_dtype": w, "offload": o, "resolution": r, "peak_device_bytes": b}
                          for (w, o, r), b in figures.items()]))
        return 0
    print("| weight dtype | offload | " + " | ".join(f"{r} px" for r in RESOLUTIONS) + " |")
    print("|---|---|" + "---:|" * len(RESOLUTIONS))
    for weight_dtype in WEIGHT_DTYPES:
        for offload in OFFLOAD_MODES:
            row = " | ".join(gb(figures[(weight_dtype, offload, r)]) for r in RESOLUTIONS)
            print(f"| {weight_dtype} | {offload} | {row} |")
    print(f"\n(planned in {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
