"""Time MDX vocal separation: signal-path overhead, or a real model with --model.

Without ``--model`` an identity ONNX graph of Kim_Vocal_2's shape stands in for
the network, so the figure is the cost of resampling, STFT/ISTFT and blending
alone. Example::

    python bench/bench_separation.py --seconds 30
    python bench/bench_separation.py --model /ckpt/misc/vocal_separator/Kim_Vocal_2.onnx
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memo_pipeline.audio.separation import KIM_VOCAL_2, MDXVocalSeparator  # noqa: E402


def _identity_model(folder: str) -> str:
    import onnx
    from onnx import TensorProto, helper

    shape = ["batch", 4, KIM_VOCAL_2.dim_f, KIM_VOCAL_2.dim_t]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = os.path.join(folder, "identity.onnx")
    onnx.save(model, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="MDX ONNX file (default: identity stand-in)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--denoise", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal((2, int(args.seconds * args.sample_rate)))).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or _identity_model(tmp)
        params = None if args.model else KIM_VOCAL_2
        separator = MDXVocalSeparator(model, params, denoise=args.denoise)
        start = time.perf_counter()
        out = separator.separate(wave, args.sample_rate, output_sample_rate=16000)
        elapsed = time.perf_counter() - start
    print(
        f"model={'identity stand-in' if not args.model else args.model} audio={args.seconds:.1f}s "
        f"@{args.sample_rate}Hz -> {out.shape} in {elapsed:.2f}s (x{args.seconds / elapsed:.1f} realtime)"
    )


if __name__ == "__main__":
    main()
