"""VAE memory: bounded frames per call on every device, and spatial tiles above 512 px.

The deviation bounds come from `python bench/vae_tiling.py --vae tiny --sizes 768` on this same
VAE (seed 9, scale 0.5) and inputs, which measured: encode of the drawn portrait 34.88 dB PSNR
(max abs 0.390 in scaled latents), decode of N(0, 1) latents 44.30 dB (max abs 0.149). The bounds
leave about 3 dB (and a third of the max abs) of margin for other CPUs' rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memo_pipeline.cli import build_parser, load_models, make_test_portrait
from memo_pipeline.tiny import TINY_VAE, randomize
from memo_pipeline.vae import (CPU_FRAMES_PER_CALL, GPU_FRAMES_PER_CALL, TILE_OVERLAP, TILE_SIZE, DiffusersVAE,
                               auto_batch_size)


@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKL

    return randomize(AutoencoderKL(**TINY_VAE), 9, scale=0.5).eval()


class Calls:
    """Input shapes of every encoder and decoder call of an AutoencoderKL."""

    def __init__(self, vae):
        self.encoder, self.decoder = [], []
        self.hooks = [vae.encoder.register_forward_pre_hook(lambda m, a: self.encoder.append(tuple(a[0].shape))),
                      vae.decoder.register_forward_pre_hook(lambda m, a: self.decoder.append(tuple(a[0].shape)))]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()


def portrait(tmp_path, size: int) -> torch.Tensor:
    from PIL import Image

    picture = np.asarray(Image.open(make_test_portrait(tmp_path / "p.png", size)).convert("RGB"))
    return torch.from_numpy(picture.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def test_tiles_are_comfyuis_default_tile_size_and_overlap(tiny_vae):
    DiffusersVAE(tiny_vae)
    assert (TILE_SIZE, TILE_OVERLAP) == (512, 64)  # VAEDecodeTiled / VAEEncodeTiled defaults in ComfyUI 0.8.0
    assert tiny_vae.tile_sample_min_size == 512 and tiny_vae.tile_latent_min_size == 64
    assert int(tiny_vae.tile_sample_min_size * tiny_vae.tile_overlap_factor) == 64  # the pixels tiles share


@pytest.mark.parametrize("height, width", [(512, 512), (64, 512), (256, 128)])
def test_frames_up_to_512_px_are_not_tiled_and_bit_identical(tiny_vae, height, width):
    tiled, untiled = DiffusersVAE(tiny_vae), DiffusersVAE(tiny_vae, tiling="off")
    frames = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1)) * 2 - 1
    latents = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(2))
    with Calls(tiny_vae) as calls:
        encoded, decoded = tiled.encode(frames), tiled.decode(latents)
    assert calls.encoder == [(1, 3, height, width)] and calls.decoder == [(1, 4, height // 8, width // 8)]
    assert torch.equal(encoded, untiled.encode(frames)) and torch.equal(decoded, untiled.decode(latents))


def test_frames_above_512_px_are_encoded_and_decoded_in_overlapping_tiles(tiny_vae):
    vae = DiffusersVAE(tiny_vae)
    assert vae.tiles(520, 64) and vae.tiles(64, 768) and not vae.tiles(512, 512)
    with Calls(tiny_vae) as calls:
        vae.encode(torch.zeros(1, 3, 768, 640))
        vae.decode(torch.zeros(1, 4, 96, 80))
    # tiles start every 448 px (56 latents) and are 512 px (64 latents) wide, cut at the frame's edge
    assert sorted(calls.encoder) == sorted((1, 3, h, w) for h in (512, 320) for w in (512, 192))
    assert sorted(calls.decoder) == sorted((1, 4, h, w) for h in (64, 40) for w in (64, 24))
    with Calls(tiny_vae) as calls:
        DiffusersVAE(tiny_vae, tiling="off").decode(torch.zeros(1, 4, 96, 80))
    assert calls.decoder == [(1, 4, 96, 80)]


def test_tiled_deviation_from_untiled_at_768_px_is_within_the_measured_bound(tiny_vae, tmp_path):
    tiled, untiled = DiffusersVAE(tiny_vae), DiffusersVAE(tiny_vae, tiling="off")
    frames = portrait(tmp_path, 768)
    reference = untiled.encode(frames)
    latents = tiled.encode(frames)
    peak = float(reference.max() - reference.min())
    assert 0 < (latents - reference).abs().max() <= 0.52
    assert 31.5 <= psnr(latents, reference, peak) < math.inf

    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(768))
    exact, split = untiled.decode(noise), tiled.decode(noise)
    assert exact.shape == split.shape == (1, 3, 768, 768)
    assert 0 < (split - exact).abs().max() <= 0.2
    assert 41.0 <= psnr(split, exact, 1.0) < math.inf


def test_frames_per_call_are_bounded_on_every_device():
    assert auto_batch_size("cpu", 1024, 1024) == CPU_FRAMES_PER_CALL == 1
    assert auto_batch_size("cuda", 512, 512) == GPU_FRAMES_PER_CALL == 16  # unchanged up to 512 px
    assert auto_batch_size("cuda", 256, 256) == 16
    assert auto_batch_size("cuda", 1024, 1024) == 4  # whole frames: the pixels of 16 frames of 512 px
    assert auto_batch_size("cuda", 768, 768) == 7
    assert auto_batch_size("cuda", 4096, 4096) == 1
    assert auto_batch_size("cuda", 1024, 1024, tiled=True) == 16  # a call holds one 512 px tile of each frame


def test_a_video_is_decoded_and_encoded_in_chunks_of_the_batch_size(tiny_vae):
    latents = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with Calls(tiny_vae) as calls:
        DiffusersVAE(tiny_vae).decode(latents)  # CPU: one frame per call
        DiffusersVAE(tiny_vae, batch_size=2).encode(torch.zeros(5, 3, 64, 64))
    assert [shape[0] for shape in calls.decoder] == [1] * 5
    assert [shape[0] for shape in calls.encoder] == [2, 2, 1]
    with Calls(tiny_vae) as calls:  # tiles and chunks together: every tile call holds at most a chunk
        DiffusersVAE(tiny_vae, batch_size=2).decode(torch.zeros(3, 4, 72, 64))
    assert sorted(shape[:1] + shape[2:] for shape in calls.decoder) == sorted(
        (n, h, w) for n in (2, 1) for h in (64, 16) for w in (64, 8))


def test_a_bad_tiling_mode_is_a_clear_error(tiny_vae):
    with pytest.raises(ValueError, match="tiling must be one of auto, off"):
        DiffusersVAE(tiny_vae, tiling="on")


def test_the_module_is_left_as_it_was_after_a_tiled_call(tiny_vae):
    """The AutoencoderKL may be shared (a ComfyUI-convention VAE, another wrapper): tiling is per call."""
    DiffusersVAE(tiny_vae).decode(torch.zeros(1, 4, 72, 8))
    assert tiny_vae.use_tiling is False


def test_generate_vae_tiling_flag_reaches_the_loaded_vae(tiny_bundle, tmp_path):
    args = ["generate", "--checkpoint", str(tiny_bundle["memo"]), "--vae", str(tiny_bundle["vae"]),
            "--wav2vec", str(tiny_bundle["wav2vec2"]), "--image", "p.png", "--audio", "a.wav", "--out", "o.mp4"]
    parser = build_parser()
    assert parser.parse_args(args).vae_tiling == "auto"
    parsed = parser.parse_args(args + ["--vae-tiling", "off"])
    from memo_pipeline.cli import Job
    from memo_pipeline.pipeline import GenerationSettings

    job = Job(parsed.checkpoint, parsed.vae, parsed.wav2vec, parsed.image, parsed.audio, parsed.out,
              GenerationSettings(), vae_tiling=parsed.vae_tiling)
    assert load_models(job).vae.tiling == "off"
    with pytest.raises(SystemExit):
        parser.parse_args(args + ["--vae-tiling", "sometimes"])


def test_comfyui_bridge_uses_comfyuis_tiled_calls_with_the_tiled_nodes_defaults_above_512_px(tiny_vae):
    """The bridge hands frames above 512 px to ComfyUI's `encode_tiled` / `decode_tiled` with what VAE
    Encode (Tiled) and VAE Decode (Tiled) pass by default (the live test runs the real ones)."""
    import pack_support as S

    S.load_pack()
    from comfyui_memo.nodes import vae_bridge

    class TiledConventionVAE(S.ComfyConventionVAE):
        def __init__(self, autoencoder):
            super().__init__(autoencoder)
            self.tiled = []

        def encode_tiled(self, pixels, **tiles):
            self.tiled.append(("encode", tuple(pixels.shape), tiles))
            return self.encode(pixels)

        def decode_tiled(self, samples, **tiles):
            self.tiled.append(("decode", tuple(samples.shape), tiles))
            return self.decode(samples)

    comfy = TiledConventionVAE(tiny_vae)
    bridge = vae_bridge.ComfyVAEBridge(comfy)
    latents = bridge.encode(torch.zeros(2, 3, 16, 520))
    assert bridge.decode(latents).shape == (2, 3, 16, 520)
    assert comfy.tiled == [("encode", (2, 16, 520, 3), dict(tile_x=512, tile_y=512, overlap=64)),
                           ("decode", (2, 4, 2, 65), dict(tile_x=64, tile_y=64, overlap=8))]
    comfy.tiled.clear()
    bridge.decode(bridge.encode(torch.zeros(2, 3, 16, 512)))
    assert comfy.tiled == [] and comfy.calls == {"encode": 2, "decode": 2}


def test_batch_passes_vae_tiling_to_its_rows_and_a_row_made_otherwise_is_not_resumed(tiny_bundle, tmp_path):
    import dataclasses

    from memo_pipeline.batch.cli import template_job
    from memo_pipeline.batch.jobs import row_fingerprint

    base = ["batch", "jobs.csv", "--out-dir", str(tmp_path), "--checkpoint", str(tiny_bundle["memo"]),
            "--vae", str(tiny_bundle["vae"]), "--wav2vec", str(tiny_bundle["wav2vec2"])]
    template = template_job(build_parser().parse_args(base + ["--vae-tiling", "off"]))
    assert template.vae_tiling == "off"
    image, audio = tmp_path / "p.png", tmp_path / "a.wav"
    image.write_bytes(b"picture"), audio.write_bytes(b"sound")
    row = dataclasses.replace(template, image=image, audio=audio, out=tmp_path / "o.mp4")
    assert row_fingerprint(row) != row_fingerprint(dataclasses.replace(row, vae_tiling="auto"))
