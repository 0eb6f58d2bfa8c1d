"""Tiny model trees in the layouts `models check` accepts, built from memo_pipeline.tiny checkpoints
and the ONNX stand-ins of the face / separation tests (shared by test_model_files and test_model_fetch)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from memo_pipeline import model_files as mf
from memo_pipeline.tiny import TINY_VAE, randomize, write_tiny_emotion2vec, write_tiny_memo, write_tiny_wav2vec


def ldm_vae_state_dict(vae) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL's weights under the original Stable Diffusion (LDM) key names, as the
    single-file VAEs in ComfyUI's models/vae are stored (the inverse of diffusers' conversion)."""
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        parts = key.split(".")
        if parts[1] == "down_blocks":
            rest = ".".join(parts[3:])
            rest = rest.replace("resnets.", "block.").replace("downsamplers.0.", "downsample.")
            key = f"{parts[0]}.down.{parts[2]}.{rest}"
        elif parts[1] == "up_blocks":
            rest = ".".join(parts[3:])
            rest = rest.replace("resnets.", "block.").replace("upsamplers.0.", "upsample.")
            key = f"{parts[0]}.up.{levels - 1 - int(parts[2])}.{rest}"
        elif parts[1] == "mid_block":
            rest = ".".join(parts[2:])
            rest = rest.replace("resnets.0.", "block_1.").replace("resnets.1.", "block_2.")
            for old, new in (("attentions.0.group_norm.", "attn_1.norm."), ("attentions.0.to_q.", "attn_1.q."),
                             ("attentions.0.to_k.", "attn_1.k."), ("attentions.0.to_v.", "attn_1.v."),
                             ("attentions.0.to_out.0.", "attn_1.proj_out.")):
                rest = rest.replace(old, new)
            key = f"{parts[0]}.mid.{rest}"
            if "attn_1" in key and key.endswith("weight") and value.ndim == 2:
                value = value[:, :, None, None]  # the original attention uses 1x1 convolutions
        key = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
        out[key] = value.detach().contiguous().clone()
    return out


def write_tiny_vae_single_file(path: Path, seed: int = 100) -> Path:
    from diffusers import AutoencoderKL

    vae = randomize(AutoencoderKL(**TINY_VAE), seed, scale=0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the tiny widths are not multiples of 32, so the file says its GroupNorm group count
    save_file(ldm_vae_state_dict(vae), str(path), metadata={"norm_num_groups": str(TINY_VAE["norm_num_groups"])})
    return path


def write_face_models(folder: Path) -> Path:
    from test_face_models import build_arcface, build_scrfd, scripted_outputs

    folder.mkdir(parents=True, exist_ok=True)
    build_scrfd(folder / mf.DETECTOR_FILE, scripted_outputs())
    rng = np.random.default_rng(7)
    build_arcface(folder / mf.RECOGNIZER_FILE, (rng.normal(size=(588, 512)) / 10).astype(np.float32),
                  rng.normal(size=(512,)).astype(np.float32))
    return folder



def write_vocal_model(path: Path) -> Path:
    from test_audio_separation import identity_model

    path.parent.mkdir(parents=True, exist_ok=True)
    identity_model(path)
    return path


def write_emotion2vec_release(folder: Path, seed: int = 300) -> Path:
    """config.yaml + model.pt (a plain tensor dict, as the released file) of the tiny emotion2vec."""
    from safetensors.torch import load_file

    weights = write_tiny_emotion2vec(folder, seed)
    torch.save(load_file(str(weights)), folder / "model.pt")
    weights.unlink()
    return folder


def write_release_tree(models: Path, seed: int = 0) -> Path:
    """Everything in the places `models fetch` installs to (ComfyUI's models/ layout)."""
    models = Path(models)
    memo = write_tiny_memo(models / mf.MEMO_DIR, seed)
    write_face_models(memo / "misc/face_analysis/models")
    write_vocal_model(memo / "misc/vocal_separator" / mf.KIM_VOCAL_FILE)
    write_tiny_vae_single_file(models / "vae" / mf.VAE_FILE, seed + 100)
    write_tiny_wav2vec(models / mf.WAV2VEC_DIR, seed + 200)
    write_emotion2vec_release(models / mf.EMOTION2VEC_DIR, seed + 300)
    return models


def repo_contents(models: Path) -> dict[str, dict[str, bytes]]:
    """repo id -> {path in the repository: bytes} for every file the registry fetches, taken from a
    release tree: the fake Hugging Face repositories."""
    repos: dict[str, dict[str, bytes]] = {}
    for item in mf.ITEMS:
        for repo_path, local in item.files:
            repos.setdefault(item.source.repo_id, {})[repo_path] = (Path(models) / local).read_bytes()
    return repos


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Any connection to something other than 127.0.0.1 fails the test."""
    real_connect = socket.socket.connect

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1"):
            raise AssertionError(f"test tried to connect to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
