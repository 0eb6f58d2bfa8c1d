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
SETTINGS = GenerationSettings(**FAST)


def _with(**changes) -> GenerationSettings:
    return GenerationSettings(**{**FAST, **changes})


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
    clip.state.save(path)  # the pipeline's state records the settings it was made with
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
    state.check_compatible(models, SETTINGS, 3, 64, 12)


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
        state.check_compatible(models, SETTINGS, 1, 64, 4)
    with pytest.raises(StateError, match="frames_per_clip 4, this run asks for 8"):
        state.check_compatible(models, _with(frames_per_clip=8), 3, 64, 12)
    with pytest.raises(StateError, match="resolution 64, this run asks for 96"):
        state.check_compatible(models, SETTINGS, 3, 96, 12)
    with pytest.raises(StateError, match="guidance"):
        state.check_compatible(models, _with(guidance_scale=1.0), 3, 64, 12)
    other = _rewrite(path, tmp_path / "other.safetensors", meta={"checkpoint_fingerprint": "0123456789abcdef"})
    with pytest.raises(StateError, match="another MEMO checkpoint"):
        GenerationState.load(other).check_compatible(models, SETTINGS, 3, 64, 12)
    tensors = load_file(str(path))
    name = next(k for k in tensors if k.startswith("memory.kv."))[len("memory.kv."):]
    renamed = {k.replace(name, "down_blocks.9.other"): v for k, v in tensors.items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"), metadata=GenerationState.read_metadata(path))
    with pytest.raises(StateError, match="other layers"):
        GenerationState.load(tmp_path / "renamed.safetensors").check_compatible(models, SETTINGS, 3, 64, 12)


@pytest.mark.parametrize("changes, message", [
    (dict(fps=25.0), "fps 30.0, this run asks for 25"),
    (dict(steps=2), "steps 1, this run asks for 2"),
    (dict(past_frames=2), "past_frames 4, this run asks for 2"),
])
def test_a_state_only_continues_with_the_settings_that_made_it(saved, changes, message):
    models, path = saved
    with pytest.raises(StateError, match=message):
        GenerationState.load(path).check_compatible(models, _with(**changes), 3, 64, 12)
    with pytest.raises(StateError, match="audio length \\(frames\\) 12, this run asks for 11"):
        GenerationState.load(path).check_compatible(models, SETTINGS, 3, 64, 11)


def test_a_state_of_another_checkpoint_with_the_same_configs_is_refused(saved, tmp_path):
    from memo_pipeline.tiny import write_tiny_bundle

    models, path = saved
    other = MemoModels.load(write_tiny_bundle(tmp_path / "other", seed=1)["memo"])
    assert checkpoint_fingerprint(other) == checkpoint_fingerprint(models)  # the configs alone cannot tell
    with pytest.raises(StateError, match="another MEMO checkpoint: its checkpoint weights"):
        GenerationState.load(path).check_compatible(other, SETTINGS, 3, 64, 12)
    GenerationState.load(path).check_compatible(models, SETTINGS, 3, 64, 12)


def test_the_weights_fingerprint_does_not_depend_on_the_load_dtype(tiny_bundle):
    from memo_pipeline.state import weights_fingerprint

    assert weights_fingerprint(MemoModels.load(tiny_bundle["memo"])) == \
        weights_fingerprint(MemoModels.load(tiny_bundle["memo"], dtype="bf16"))


def test_hand_edited_states_are_refused(saved, tmp_path):
    _, path = saved
    tensors = load_file(str(path))
    with pytest.raises(StateError, match=r"outside \[0, 1\]"):
        GenerationState.load(_rewrite(path, tmp_path / "big.safetensors", tensors={"past_frames": tensors["past_frames"] * 1e6}))
    with pytest.raises(StateError, match="next_clip 0.*holds a motion memory"):
        GenerationState.load(_rewrite(path, tmp_path / "zero.safetensors", meta={"next_clip": "0"}))
    z_key = next(k for k in tensors if k.startswith("memory.z."))
    with pytest.raises(StateError, match="key sums outside"):
        GenerationState.load(_rewrite(path, tmp_path / "z.safetensors", tensors={z_key: tensors[z_key] * 1e6}))
    models, _ = saved
    for key in ("settings.fps", "weights_fingerprint"):
        with pytest.raises(StateError, match="does not record"):
            GenerationState.load(_rewrite(path, tmp_path / "old.safetensors", drop=(key,))).check_compatible(
                models, SETTINGS, 3, 64, 12)
    with pytest.raises(StateError, match="decay"):
        GenerationState.load(_rewrite(path, tmp_path / "decay.safetensors", meta={"decay": "0.5"})).check_compatible(
            models, SETTINGS, 3, 64, 12)


def test_a_state_file_appears_whole_with_the_video_s_permissions(saved, tmp_path):
    import os

    _, path = saved
    state = GenerationState.load(path)
    old = os.umask(0o022)
    try:
        state.save(tmp_path / "s.safetensors")
        (tmp_path / "v.mp4").touch()  # any new file of this process, as the video writer makes
    finally:
        os.umask(old)
    assert (tmp_path / "s.safetensors").stat().st_mode & 0o777 == (tmp_path / "v.mp4").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_full_disk_while_saving_is_an_os_error_naming_the_file_and_keeps_the_older_state(saved, tmp_path, monkeypatch):
    import errno

    from memo_pipeline import state as state_module

    _, path = saved
    state = GenerationState.load(path)
    target = tmp_path / "s.safetensors"
    state.save(target)
    before = target.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)  # a part was written, then the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_module, "save_file", disk_full)
    with pytest.raises(OSError) as raised:
        state.save(target)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]
