"""Time and peak memory of MEMO's wav2vec2 feature extraction, one pass vs windowed.

Runs on random weights (no checkpoint needed), so it measures cost, not quality; the
deviation column shows how far the windowed transformer strays from the single pass on
this random model (a trained model attends more locally and should stray less).

    python bench/bench_audio_features.py                      # tiny config, 1 and 10 minutes
    python bench/bench_audio_features.py --config base --minutes 1 --device cuda

Each measurement runs in a fresh process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = {
    # Published kernel layout, tiny widths.
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
    # facebook/wav2vec2-base-960h sizes.
    "base": dict(),
}


def speech_like(seconds: float, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    voiced = np.sin(2 * np.pi * 180 * t * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t)))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t)
    return (0.3 * voiced * envelope + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def build_encoder(config_name: str, device: str):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from memo_pipeline.audio.features import Wav2Vec2AudioEncoder

    torch.manual_seed(0)
    model = Wav2Vec2Model(Wav2Vec2Config(**CONFIGS[config_name])).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # fan-in scaled weights keep activations O(1) through the layers
        for param in model.parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(param.numel() / param.shape[0]))
    return Wav2Vec2AudioEncoder(model.to(device))


def measure(config_name, device, seconds, max_pass_seconds, context_seconds, result_queue):
    import torch

    from memo_pipeline.audio.features import extract_audio_features

    torch.set_num_threads(max(1, torch.get_num_threads()))
    encoder = build_encoder(config_name, device)
    audio = speech_like(seconds)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    features = extract_audio_features(encoder, audio, max_pass_seconds=max_pass_seconds, context_seconds=context_seconds)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    result_queue.put((elapsed, (baseline_rss / 1024, peak_rss / 1024), gpu_peak, features.layer_features.numpy()))


def run(config_name, device, seconds, max_pass_seconds, context_seconds):
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(config_name, device, seconds, max_pass_seconds, context_seconds, queue))
    process.start()
    elapsed, rss_mb, gpu_mb, features = queue.get()
    process.join()
    if process.exitcode:
        raise RuntimeError(f"measurement process failed with exit code {process.exitcode}")
    import torch

    return elapsed, rss_mb, gpu_mb, torch.from_numpy(features)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--minutes", default="1,10", help="comma-separated audio lengths in minutes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-pass-seconds", type=float, default=60.0, help="window length of the windowed mode")
    parser.add_argument("--context-seconds", type=float, default=5.0)
    parser.add_argument("--skip-one-pass-above", type=float, default=15.0,
                        help="minutes above which the single pass is skipped (its attention is O(S^2) time)")
    args = parser.parse_args()

    print(f"config={args.config} device={args.device} window={args.max_pass_seconds:g}s context={args.context_seconds:g}s")
    print(f"{'audio':>8} {'mode':>9} {'time s':>8} {'s/min':>7} {'RSS MB before→peak':>19} {'GPU MB':>8} {'rel RMS dev':>11} {'max |dev|':>9}")
    for minutes in (float(m) for m in args.minutes.split(",")):
        seconds = minutes * 60
        modes = [("windowed", args.max_pass_seconds)]
        if minutes <= args.skip_one_pass_above:
            modes.insert(0, ("one pass", None))
        reference = None
        for label, max_pass in modes:
            elapsed, rss_mb, gpu_mb, features = run(args.config, args.device, seconds, max_pass, args.context_seconds)
            if reference is None:
                reference, rel, worst = features, 0.0, 0.0
            else:
                diff = features - reference
                rel = (diff.pow(2).mean() / reference.pow(2).mean()).sqrt().item()
                worst = diff.abs().max().item()
            print(f"{minutes:6.1f} m {label:>9} {elapsed:8.2f} {elapsed / minutes:7.2f} {rss_mb[0]:9.0f}→{rss_mb[1]:<9.0f} {gpu_mb:8.0f} {rel:11.4f} {worst:9.4f}")


if __name__ == "__main__":
    main()
