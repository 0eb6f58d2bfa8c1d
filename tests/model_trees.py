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


# ------------------------------------------------------------------ layouts and damage, one tree each
# Every entry edits a copy of the release tree; `test_model_rules` checks that for each of them the
# verdict of `models check` equals whether the loaders load the files.

def _diffusers_vae_state_dict(seed: int) -> dict[str, torch.Tensor]:
    from diffusers import AutoencoderKL

    vae = randomize(AutoencoderKL(**TINY_VAE), seed, scale=0.5)
    return {k: v.detach().contiguous().clone() for k, v in vae.state_dict().items()}


def _save_vae_file(path: Path, tensors: dict) -> None:
    save_file(tensors, str(path), metadata={"norm_num_groups": str(TINY_VAE["norm_num_groups"])})


def vae_file_with_diffusers_names(models: Path, old_attention: bool = False) -> None:
    """A single VAE file with diffusers key names (what ComfyUI's Load VAE converts and loads)."""
    tensors = _diffusers_vae_state_dict(7)
    if old_attention:
        names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        renamed = {}
        for key, value in tensors.items():
            for new, old in names.items():
                key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
            renamed[key] = value
        tensors = renamed
    _save_vae_file(models / "vae" / mf.VAE_FILE, tensors)


def vae_file_with_prefix_and_training_leftovers(models: Path, prefix: str = "vae.") -> None:
    path = models / "vae" / mf.VAE_FILE
    from safetensors.torch import load_file

    tensors = {prefix + k: v for k, v in load_file(str(path)).items()}
    tensors[prefix + "loss.discriminator.weight"] = torch.zeros(3)
    tensors[prefix + "model_ema.decay"] = torch.ones(())
    _save_vae_file(path, tensors)


def vae_folder_named(models: Path, weights_name: str) -> None:
    from memo_pipeline.tiny import write_tiny_vae

    (models / "vae" / mf.VAE_FILE).unlink()
    folder = write_tiny_vae(models / "vae/sd-vae-ft-mse", seed=9)
    if weights_name != "diffusion_pytorch_model.safetensors":
        (folder / "diffusion_pytorch_model.safetensors").rename(folder / weights_name)


def edit_header(path: Path, edit) -> None:
    """Rewrite a safetensors file's JSON header (the data bytes stay as they are)."""
    import json

    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length:])


def overlap_two_tensors(path: Path) -> None:
    """Move one tensor's span back by 4 bytes into its neighbour (leaving a gap after it): every span
    still fits its shape and the last one still ends at the end of the file."""
    def edit(header):
        spans = sorted((v["data_offsets"][0], name) for name, v in header.items() if name != "__metadata__")
        name = spans[len(spans) // 2][1]
        start, stop = header[name]["data_offsets"]
        header[name]["data_offsets"] = [start - 4, stop - 4]

    edit_header(path, edit)


def nested_header(path: Path, depth: int = 100_000) -> None:
    raw = b"[" * depth + b"]" * depth
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)


def edit_json(path: Path, **changes) -> None:
    import json

    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def folder_in_place_of(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "x").write_text("a folder where a file should be")


def wav2vec2_as_pickle(models: Path) -> None:
    from safetensors.torch import load_file

    folder = models / mf.WAV2VEC_DIR
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def wav2vec2_single_file(models: Path) -> None:
    """A single file as ComfyUI keeps them (config inferred from shapes, which needs 64-wide heads)."""
    import shutil

    from transformers import Wav2Vec2Config, Wav2Vec2Model

    shutil.rmtree(models / mf.WAV2VEC_DIR)
    config = Wav2Vec2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=1, intermediate_size=32,
                            conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    model = randomize(Wav2Vec2Model(config), 11, scale=0.5)
    save_file({f"wav2vec2.{k}": v.contiguous() for k, v in model.state_dict().items()},
              str(models / "audio_encoders/wav2vec2_tiny.safetensors"))


def only_pickled_memo_weights(models: Path) -> None:
    from safetensors.torch import load_file

    folder = models / mf.MEMO_DIR / "image_proj"
    torch.save(load_file(str(folder / "diffusion_pytorch_model.safetensors")), folder / "diffusion_pytorch_model.bin")
    (folder / "diffusion_pytorch_model.safetensors").unlink()


def sharded_memo_weights(models: Path) -> None:
    import json

    from safetensors.torch import load_file

    folder = models / mf.MEMO_DIR / "audio_proj"
    tensors = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"a.safetensors": names[:half], "b.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(folder / shard))
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


MEMO_WEIGHTS = f"{mf.MEMO_DIR}/diffusion_net/diffusion_pytorch_model.safetensors"
TREES = {
    "release": lambda m: None,
    "vae file with diffusers names": vae_file_with_diffusers_names,
    "vae file with diffusers names, old attention names":
        lambda m: vae_file_with_diffusers_names(m, old_attention=True),
    "vae file with a vae. prefix and loss./model_ema. keys": vae_file_with_prefix_and_training_leftovers,
    "vae file with a first_stage_model. prefix":
        lambda m: vae_file_with_prefix_and_training_leftovers(m, "first_stage_model."),
    "vae folder (diffusers)": lambda m: vae_folder_named(m, "diffusion_pytorch_model.safetensors"),
    "vae folder with model.safetensors": lambda m: vae_folder_named(m, "model.safetensors"),
    "vae folder asking for 2000 layers per block": lambda m: (
        vae_folder_named(m, "diffusion_pytorch_model.safetensors"),
        edit_json(m / "vae/sd-vae-ft-mse/config.json", layers_per_block=2000)),
    "vae file with overlapping tensors": lambda m: overlap_two_tensors(m / "vae" / mf.VAE_FILE),
    "vae file with a deeply nested header": lambda m: nested_header(m / "vae" / mf.VAE_FILE),
    "memo weights with overlapping tensors": lambda m: overlap_two_tensors(m / MEMO_WEIGHTS),
    "memo weights truncated": lambda m: (m / MEMO_WEIGHTS).write_bytes((m / MEMO_WEIGHTS).read_bytes()[:-1000]),
    "memo weights with a deeply nested header": lambda m: nested_header(m / MEMO_WEIGHTS),
    "memo weights path is a folder": lambda m: folder_in_place_of(m / MEMO_WEIGHTS),
    "memo config.json is a folder": lambda m: folder_in_place_of(m / mf.MEMO_DIR / "image_proj/config.json"),
    "memo config asking for 2000 layers per block":
        lambda m: edit_json(m / mf.MEMO_DIR / "reference_net/config.json", layers_per_block=2000),
    "memo weights only pickled": only_pickled_memo_weights,
    "memo weights sharded": sharded_memo_weights,
    "wav2vec2 folder with pytorch_model.bin": wav2vec2_as_pickle,
    "wav2vec2 single file in audio_encoders": wav2vec2_single_file,
    "wav2vec2 config asking for 2000 layers":
        lambda m: edit_json(m / mf.WAV2VEC_DIR / "config.json", num_hidden_layers=2000),
    "wav2vec2 weights with overlapping tensors": lambda m: overlap_two_tensors(m / mf.WAV2VEC_DIR / "model.safetensors"),
}
