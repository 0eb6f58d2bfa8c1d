"""The VAE bridge's tiling on ComfyUI's own VAE class: above 512 px it gives exactly what ComfyUI's
VAE Encode (Tiled) / VAE Decode (Tiled) nodes give with their default tile size and overlap; up to
512 px exactly the plain VAE Encode / VAE Decode. A random-weight SD1.5-architecture VAE (the only
one ComfyUI builds from these keys), one frame 8 px high to keep the CPU run short.
"""

import pytest

import memo_comfy_live as live

live.skip_module_unless_comfyui()

pytestmark = pytest.mark.comfyui

PROBE = r'''
import nodes
from memo_probe_pack.nodes import vae_bridge
from memo_probe_pack.memo_pipeline.vae import LATENT_SCALE
from diffusers import AutoencoderKL
torch.manual_seed(0)
cvae = comfy.sd.VAE(sd=AutoencoderKL(**config).state_dict())
bridge = vae_bridge.ComfyVAEBridge(cvae)
report = {}
for width in (520, 512):
    frames = torch.rand(1, 3, 8, width, generator=torch.Generator().manual_seed(width)) * 2 - 1
    pixels = ((frames + 1) / 2).clamp(0, 1).movedim(1, -1)
    tiled = width > 512
    with torch.inference_mode():
        ours = bridge.encode(frames)
        back = bridge.decode(ours)
        samples = {"samples": ours / LATENT_SCALE}
        if tiled:
            node_latents = nodes.VAEEncodeTiled().encode(cvae, pixels, 512, 64)[0]["samples"] * LATENT_SCALE
            node_images = nodes.VAEDecodeTiled().decode(cvae, samples, 512, 64)[0].movedim(-1, 1)
        else:
            node_latents = nodes.VAEEncode().encode(cvae, pixels)[0]["samples"] * LATENT_SCALE
            node_images = nodes.VAEDecode().decode(cvae, samples)[0].movedim(-1, 1)
        plain_images = nodes.VAEDecode().decode(cvae, samples)[0].movedim(-1, 1)
    report[width] = {"shape": list(back.shape), "encode_is_node": torch.equal(ours, node_latents),
                     "decode_is_node": torch.equal(back, node_images),
                     "decode_vs_plain": float((back - plain_images).abs().max())}
print("PROBE " + json.dumps(report))
'''

def test_bridge_tiles_as_comfyuis_tiled_vae_nodes_above_512_px_and_not_below(tmp_path):
    report = live.run_pack_probe(PROBE, live.SD_VAE_CONFIG, tmp_path)
    above, at = report["520"], report["512"]
    assert above["shape"] == [1, 3, 8, 520] and at["shape"] == [1, 3, 8, 512]
    assert above["encode_is_node"] and above["decode_is_node"], report  # VAE Encode/Decode (Tiled), defaults
    assert above["decode_vs_plain"] > 0, report  # the tiled path really ran
    assert at["encode_is_node"] and at["decode_is_node"] and at["decode_vs_plain"] == 0, report
