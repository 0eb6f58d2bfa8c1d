"""Model construction from released configs, strict loading, saving, and the motion memory object."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from support import SPEC
from memo_pipeline.loading import COMPONENTS, CheckpointError, MemoModels, build_model, load_component
from memo_pipeline.models.motion_memory import MotionMemory
from memo_pipeline.models.motion_module import MotionModule
from memo_pipeline.tiny import TINY_CONFIGS, randomize

MODELS = ["reference_net", "diffusion_net", "audio_proj", "image_proj", "emotion_classifier"]


@pytest.mark.parametrize("name", MODELS)
def test_full_size_state_dict_matches_official_manifest(name):
    config = json.loads((SPEC / name / "config.json").read_text())
    manifest = json.loads((SPEC / name / "state_dict_manifest.json").read_text())
    model = build_model(COMPONENTS[name][1], config, name, device="meta")
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == manifest


def _write_component(tmp_path, name="image_proj"):
    folder = tmp_path / name
    cls = COMPONENTS[name][1]
    model = randomize(build_model(cls, TINY_CONFIGS[name], name), seed=3)
    from memo_pipeline.loading import save_component

    save_component(model, folder, COMPONENTS[name][2])
    return folder, cls, model


def test_save_and_load_round_trip(tmp_path):
    folder, cls, model = _write_component(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "ImageProjModel"
    loaded = load_component(folder, cls)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    x = torch.randn(2, 512)
    torch.testing.assert_close(loaded(x), model(x), atol=1e-6, rtol=0)  # BLAS paths may differ by memory alignment
    half = load_component(folder, cls, dtype="bf16")
    assert half.proj.weight.dtype == torch.bfloat16


def _edit_weights(folder, edit):
    path = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("norm.bias"), r"1 missing keys: norm\.bias"),
        (lambda t: t.__setitem__("extra.weight", torch.zeros(1)), r"1 unexpected keys: extra\.weight"),
        (lambda t: t.__setitem__("proj.bias", torch.zeros(7)), r"shape mismatches: proj\.bias \(7,\) \(model wants \(96,\)\)"),
    ],
)
def test_strict_key_and_shape_errors_name_file_and_keys(tmp_path, edit, message):
    folder, cls, _ = _write_component(tmp_path)
    _edit_weights(folder, edit)
    with pytest.raises(CheckpointError, match=message) as err:
        load_component(folder, cls)
    assert "diffusion_pytorch_model.safetensors" in str(err.value)


def test_missing_config_json(tmp_path):
    folder, cls, _ = _write_component(tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_component(folder, cls)


def test_invalid_and_unknown_config(tmp_path, caplog):
    folder, cls, _ = _write_component(tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_component(folder, cls)
    (folder / "config.json").write_text(json.dumps({"cross_attention_dim": 24, "use_audio_module": True}))
    with caplog.at_level("WARNING"):
        load_component(folder, cls)  # like the official from_pretrained: keys the model does not take are ignored
    assert "use_audio_module" in caplog.text
    (folder / "config.json").write_text(json.dumps({"cross_attention_dim": 32}))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_component(folder, cls)


def test_corrupt_safetensors(tmp_path):
    folder, cls, _ = _write_component(tmp_path)
    path = folder / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_component(folder, cls)


def test_pickle_weights_are_refused_not_unpickled(tmp_path):
    folder, cls, model = _write_component(tmp_path)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    torch.save({"trap": Trap()}, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only pickled weights .*diffusion_pytorch_model.bin"):
        load_component(folder, cls)
    assert not marker.exists()


def test_sharded_weights(tmp_path):
    folder, cls, model = _write_component(tmp_path)
    tensors = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"a.safetensors": names[:2], "b.safetensors": names[2:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(folder / shard))
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    loaded = load_component(folder, cls)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_wrong_checkpoint_folder(tmp_path, tiny_bundle):
    with pytest.raises(CheckpointError, match="does not exist"):
        MemoModels.load(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not a MEMO checkpoint folder: missing reference_net, diffusion_net"):
        MemoModels.load(tiny_bundle["vae"])


def test_full_checkpoint_round_trip(tmp_path, tiny_bundle):
    models = MemoModels.load(tiny_bundle["memo"])
    assert models.emotion_classifier is not None
    models.save(tmp_path / "copy")
    for name, (sub, _, _) in COMPONENTS.items():
        a = load_file(str(tiny_bundle["memo"] / sub / "diffusion_pytorch_model.safetensors"))
        b = load_file(str(tmp_path / "copy" / sub / "diffusion_pytorch_model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    shutil.rmtree(tmp_path / "copy" / "misc")
    assert MemoModels.load(tmp_path / "copy").emotion_classifier is None


def _run(module, video, motion, memory, update):
    """The module on a `(b, c, f, h, w)` clip, folded as the diffusion net hands it over."""
    from memo_pipeline.parity.modules import fold_frames, unfold_frames

    frames = video.shape[2]
    out = module(fold_frames(video), None if motion is None else fold_frames(motion), frames, memory, update)
    return unfold_frames(out, frames)


def _motion_module():
    module = MotionModule(64, num_attention_heads=8, num_transformer_block=1, temporal_position_encoding=True,
                          temporal_position_encoding_max_len=32)
    return randomize(module, seed=1).eval()


def test_memory_is_data_and_runs_are_bit_identical():
    module = _motion_module()
    x = torch.randn(2, 64, 4, 3, 3)
    motion = torch.randn(2, 64, 4, 3, 3)
    results = []
    for _ in range(2):
        memory = MotionMemory()
        with torch.no_grad():
            first = _run(module, x, motion, memory, "reset")
            later = _run(module, x, motion, memory, "append")
            read = _run(module, x, None, memory, "read")
        results.append((first, later, read, memory.copy()))
    for a, b in zip(results[0][:3], results[1][:3]):
        assert torch.equal(a, b)
    assert set(results[0][3].kv) == {"temporal_transformer.transformer_blocks.0.attention_blocks.0",
                                     "temporal_transformer.transformer_blocks.0.attention_blocks.1"}
    assert not any(hasattr(m, "memory") for m in module.modules())  # nothing hidden in the layers


def test_memory_reset_copy_move_save_load(tmp_path):
    module = _motion_module()
    memory = MotionMemory()
    with torch.no_grad():
        _run(module, torch.randn(2, 64, 4, 3, 3), torch.randn(2, 64, 4, 3, 3), memory, "reset")
    snapshot = memory.copy()
    memory.save(tmp_path / "memory.safetensors")
    restored = MotionMemory.load(tmp_path / "memory.safetensors")
    assert restored.kv.keys() == memory.kv.keys()
    assert all(torch.equal(restored.kv[k], memory.kv[k]) and torch.equal(restored.z[k], memory.z[k]) for k in memory.kv)
    as_half = memory.to(dtype=torch.float16)
    assert next(iter(as_half.kv.values())).dtype == torch.float16 and next(iter(memory.kv.values())).dtype == torch.float32
    memory.reset()
    assert memory.is_empty and not snapshot.is_empty
    with pytest.raises(RuntimeError, match="must write the memory"):
        with torch.no_grad():
            _run(module, torch.randn(2, 64, 4, 3, 3), None, memory, "read")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a saved MEMO motion memory"):
        MotionMemory.load(tmp_path / "other.safetensors")


def test_clip_longer_than_position_table_is_a_clear_error():
    module = _motion_module()
    with pytest.raises(ValueError, match="longer than the model's temporal position table"):
        with torch.no_grad():
            _run(module, torch.randn(1, 64, 33, 2, 2), torch.randn(1, 64, 2, 2, 2), MotionMemory(), "reset")


def test_unsupported_diffusion_net_options_are_rejected():
    config = dict(TINY_CONFIGS["diffusion_net"], use_inflated_groupnorm=False)
    with pytest.raises(CheckpointError, match="use_inflated_groupnorm=False"):
        build_model(COMPONENTS["diffusion_net"][1], config, "diffusion_net/config.json")


def test_attention_kernels_are_set_on_every_softmax_attention(monkeypatch):
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0, JointAttnProcessor2_0

    from memo_pipeline import attention_backend
    from memo_pipeline.tiny import tiny_memo_models

    models = tiny_memo_models(seed=3)
    layers = [m for net in models.modules().values() for m in net.modules() if isinstance(m, Attention)]
    joint = [m for m in layers if m.added_kv_proj_dim is not None]
    assert joint and len(joint) < len(layers)
    for layer in layers:
        layer.set_processor(AttnProcessor2_0())  # scramble: the joint layers now have the wrong kind
    assert attention_backend.use_attention_kernels(models, "sdpa") == len(layers)
    assert all(isinstance(m.processor, JointAttnProcessor2_0) for m in joint)
    assert all(type(m.processor) is AttnProcessor2_0 for m in layers if m not in joint)
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        attention_backend.use_attention_kernels(models, "flash")
    monkeypatch.setattr(attention_backend, "xformers_available", lambda: False)
    with pytest.raises(RuntimeError, match="xformers"):
        attention_backend.use_attention_kernels(models, "xformers")
    from diffusers.models import attention_processor

    monkeypatch.setattr(attention_backend, "xformers_available", lambda: True)
    monkeypatch.delattr(attention_processor, "XFormersJointAttnProcessor", raising=False)  # as in diffusers 0.31
    with pytest.raises(RuntimeError, match="XFormersJointAttnProcessor"):
        attention_backend.use_attention_kernels(models, "xformers")
    assert all(isinstance(m.processor, JointAttnProcessor2_0) for m in joint)  # nothing was half switched
