"""Pickled weights are only opened on a torch whose weights_only loader is a real safety boundary;
sharded safetensors indexes cannot point outside the model folder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from memo_pipeline.audio.emotion2vec import read_checkpoint
from memo_pipeline.audio.wav2vec2_weights import Wav2Vec2WeightsError, _read_tensors
from memo_pipeline.loading import CheckpointError, SAFE_PICKLE_TORCH, read_weights


@pytest.fixture
def pickled(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.ones(2)}, path)
    return path


def test_pickles_load_on_a_safe_torch_and_are_refused_on_an_old_one(pickled, monkeypatch):
    assert torch.equal(read_checkpoint(pickled)["weight"], torch.ones(2))
    bin_file = pickled.with_name("pytorch_model.bin")
    bin_file.write_bytes(pickled.read_bytes())
    assert torch.equal(_read_tensors(bin_file)["weight"], torch.ones(2))
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    with pytest.raises(CheckpointError, match=f"torch >= {SAFE_PICKLE_TORCH}.*torch 2.5.1"):
        read_checkpoint(pickled)
    with pytest.raises(Wav2Vec2WeightsError, match="convert the file to .safetensors"):
        _read_tensors(bin_file)
    safe = pickled.with_name("model.safetensors")
    save_file({"weight": torch.ones(2)}, str(safe))
    assert torch.equal(read_checkpoint(safe)["weight"], torch.ones(2))  # safetensors on any torch


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_shards_must_stay_inside_the_model_folder(tmp_path, shard):
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"a": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))
    index = {"weight_map": {"a": shard}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the model folder"):
        read_weights(folder)


def test_wav2vec2_index_shards_must_stay_inside_the_folder(tmp_path):
    from memo_pipeline.audio.wav2vec2_weights import load_wav2vec2

    folder = tmp_path / "wav2vec2"
    folder.mkdir()
    save_file({"a": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../outside.safetensors"}}))
    with pytest.raises(Wav2Vec2WeightsError, match="outside the model folder"):
        load_wav2vec2(folder)
