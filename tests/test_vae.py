"""VAE loading: diffusers folders and single-file SD-layout VAEs, built locally and strictly."""

from __future__ import annotations

import re
import socket

import pytest
import torch
from safetensors.torch import save_file

from memo_pipeline.cli import main, make_test_portrait, make_test_tone
from memo_pipeline.tiny import randomize
from memo_pipeline.vae import DiffusersVAE, SD_VAE_ARCHITECTURE, single_file_config
from memo_pipeline.video_io import read_video_info

SMALL_SD_VAE = dict(SD_VAE_ARCHITECTURE, block_out_channels=[32, 32, 32, 32], layers_per_block=1)


def ldm_state_dict(vae) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL's weights under the original SD (LDM) names, as single VAE files have them."""
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        new = key
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m[1])}.", new)
        new = re.sub(r"^(decoder\.up\.\d+\.)resnets\.", r"\1block.", new)
        new = re.sub(r"^(decoder\.up\.\d+\.)upsamplers\.0\.", r"\1upsample.", new)
        new = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m[1]) + 1}.", new)
        new = new.replace(".conv_shortcut.", ".nin_shortcut.").replace(".conv_norm_out.", ".norm_out.")
        attention = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)$", new)
        if attention:
            name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[attention[2]]
            new = f"{attention[1]}.mid.attn_1.{name}.{attention[3]}"
            if name != "norm" and value.dim() == 2:
                value = value[:, :, None, None]
        out[new] = value.detach().contiguous()
    return out


@pytest.fixture(scope="module")
def single_file_vae(tmp_path_factory):
    from diffusers import AutoencoderKL

    vae = randomize(AutoencoderKL(**SMALL_SD_VAE), 5, scale=0.5).eval()
    path = tmp_path_factory.mktemp("vae") / "vae-ft-mse-small.safetensors"
    save_file(ldm_state_dict(vae), str(path))
    return vae, path


def test_single_file_vae_is_built_locally_and_equals_the_original(single_file_vae):
    vae, path = single_file_vae
    loaded = DiffusersVAE.from_pretrained(path)
    original = DiffusersVAE(vae)
    frames = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded.encode(frames), original.encode(frames))
    latents = torch.randn(2, 4, 4, 4)
    assert torch.equal(loaded.decode(latents), original.decode(latents))


def test_sd_vae_ft_mse_shapes_give_its_published_architecture():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        full = AutoencoderKL(**SD_VAE_ARCHITECTURE)
    config = single_file_config(ldm_state_dict(full))
    assert config == SD_VAE_ARCHITECTURE
    assert sum(p.numel() for p in full.parameters()) == 83653863  # sd-vae-ft-mse's parameter count


def test_not_a_vae_file_is_a_clear_error(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not an SD VAE"):
        DiffusersVAE.from_pretrained(path)


def test_cli_run_with_a_single_file_vae_opens_no_socket(single_file_vae, tiny_bundle, tmp_path, monkeypatch):
    opened = []

    def refuse(*args, **kwargs):
        opened.append(args)
        raise OSError("network access during a local run")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    _, path = single_file_vae
    out = tmp_path / "out.mp4"
    code = main(["generate", "--checkpoint", str(tiny_bundle["memo"]), "--vae", str(path),
                 "--wav2vec", str(tiny_bundle["wav2vec2"]), "--image", str(make_test_portrait(tmp_path / "p.png", 96)),
                 "--audio", str(make_test_tone(tmp_path / "t.wav", 0.2)), "--out", str(out), "--steps", "1",
                 "--resolution", "64", "--allow-no-face", "--no-progress"])
    assert code == 0 and not opened
    assert read_video_info(out)["frames"] == 6


def test_a_normal_run_prints_no_library_notices(tiny_bundle, tmp_path, capfd, caplog, recwarn):
    """No 'accelerate not found' (or any other) notice from diffusers/transformers during a run."""
    import logging

    with caplog.at_level(logging.INFO):
        code = main(["generate", "--checkpoint", str(tiny_bundle["memo"]), "--vae", str(tiny_bundle["vae"]),
                     "--wav2vec", str(tiny_bundle["wav2vec2"]), "--image", str(make_test_portrait(tmp_path / "p.png", 96)),
                     "--audio", str(make_test_tone(tmp_path / "t.wav", 0.2)), "--out", str(tmp_path / "o.mp4"),
                     "--steps", "1", "--resolution", "64", "--allow-no-face", "--no-progress"])
    assert code == 0
    err = capfd.readouterr().err
    assert "accelerate" not in err.lower() and "accelerate" not in caplog.text.lower()
    warnings_seen = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings_seen] == ["no face models: using a zero identity embedding"]
    assert not [w for w in recwarn if "memo" not in str(w.filename)], [str(w.message) for w in recwarn]
