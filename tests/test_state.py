"""Saved generation states: everything read back is checked, and a state only continues the generation it fits."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from memo_pipeline.loading import MemoModels
from memo_pipeline.pipeline import GenerationSettings, MemoPipeline, WindowedAudio, reference_pixels
from memo_pipeline.state import GenerationState, StateError, checkpoint_fingerprint
from memo_pipeline.vae import DiffusersVAE

FAST = dict(steps=1, frames_per_clip=4, past_frames=4, init_past_frames=4, seed=3)


@pytest.fixture(scope="module")
def saved(tiny_bundle, tmp_path_factory):
    models = MemoModels.load(tiny_bundle["memo"])
    pipeline = MemoPipeline(models, DiffusersVAE.from_pretrained(tiny_bundle["vae"], batch_size=8))
    g = torch.Generator().manual_seed(0)
    audio = WindowedAudio(torch.randn(12, 5, 2, 16, generator=g))
    settings = GenerationSettings(**FAST)
    stream = pipeline.generate(reference_pixels(torch.rand(64, 64, 3, generator=g)), None, audio, 3, settings)
    clip = next(stream)
    stream.close()
    path = tmp_path_factory.mktemp("state") / "good.safetensors"
    clip.state.save(path, metadata=GenerationState.describe(models, settings.frames_per_clip))
    return models, path


def _rewrite(src, dst, tensors=None, meta=None, drop=()):
    from memo_pipeline.state import GenerationState as S

    old_meta = S.read_metadata(src)
    old = load_file(str(src))
    old.update(tensors or {})
    for key in drop:
        old.pop(key, None)
        old_meta.pop(key, None)
    old_meta.update(meta or {})
    save_file(old, str(dst), metadata=old_meta)
    return dst


def test_good_state_loads_and_fits(saved):
    models, path = saved
    state = GenerationState.load(path)
    assert state.next_clip == 1 and state.metadata["checkpoint_fingerprint"] == checkpoint_fingerprint(models)
    state.check_compatible(models, 4, 3, 64, 4, 3.5)


@pytest.mark.parametrize("change, message", [
    (dict(drop=("next_clip",)), "no 'next_clip'"),
    (dict(meta={"next_clip": "two"}), "not numbers"),
    (dict(meta={"decay": "nan"}), "decay"),
    (dict(drop=("rng_state",)), "generator state is missing"),
    (dict(tensors={"rng_state": torch.zeros(7, dtype=torch.uint8)}), "generator state is invalid"),
    (dict(drop=("past_frames",)), "lacks the motion memory or past frames"),
    (dict(tensors={"past_frames": torch.full((4, 3, 64, 64), float("nan"))}), "NaN"),
    (dict(tensors={"past_frames": torch.zeros(4, 64, 64)}), "expected (n, 3, H, W)"),
    (dict(tensors={"extra": torch.zeros(1)}), "unexpected tensors"),
    (dict(meta={"format": "something"}), "not a saved MEMO generation state"),
])
def test_broken_state_files_are_clear_errors(saved, tmp_path, change, message):
    _, path = saved
    bad = _rewrite(path, tmp_path / "bad.safetensors", **change)
    with pytest.raises(StateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GenerationState.load(bad)


def test_broken_memory_entries_are_clear_errors(saved, tmp_path):
    _, path = saved
    tensors = load_file(str(path))
    kv_key = next(k for k in tensors if k.startswith("memory.kv."))
    z_key = "memory.z." + kv_key[len("memory.kv."):]
    for change, message in (({kv_key: tensors[kv_key] * float("inf")}, "NaN/inf"),
                            ({kv_key: tensors[kv_key][..., :2].contiguous()}, "expected"),):
        with pytest.raises(StateError, match=message):
            GenerationState.load(_rewrite(path, tmp_path / "bad.safetensors", tensors=change))
    with pytest.raises(StateError, match="KV and Z"):
        GenerationState.load(_rewrite(path, tmp_path / "bad2.safetensors", drop=(z_key,)))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(StateError):
        GenerationState.load(tmp_path / "junk.safetensors")


def test_state_of_another_run_is_refused(saved, tmp_path):
    models, path = saved
    state = GenerationState.load(path)
    with pytest.raises(StateError, match="nothing is left"):
        state.check_compatible(models, 4, 1, 64, 4, 3.5)
    with pytest.raises(StateError, match="frames per clip"):
        state.check_compatible(models, 8, 3, 64, 4, 3.5)
    with pytest.raises(StateError, match="64x64 frames"):
        state.check_compatible(models, 4, 3, 96, 4, 3.5)
    with pytest.raises(StateError, match="guidance"):
        state.check_compatible(models, 4, 3, 64, 4, 1.0)
    other = _rewrite(path, tmp_path / "other.safetensors", meta={"checkpoint_fingerprint": "0123456789abcdef"})
    with pytest.raises(StateError, match="another MEMO checkpoint"):
        GenerationState.load(other).check_compatible(models, 4, 3, 64, 4, 3.5)
    tensors = load_file(str(path))
    name = next(k for k in tensors if k.startswith("memory.kv."))[len("memory.kv."):]
    renamed = {k.replace(name, "down_blocks.9.other"): v for k, v in tensors.items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"), metadata=GenerationState.read_metadata(path))
    with pytest.raises(StateError, match="other layers"):
        GenerationState.load(tmp_path / "renamed.safetensors").check_compatible(models, 4, 3, 64, 4, 3.5)
