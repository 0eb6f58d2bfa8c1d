"""generate --offload model|sequential: the same video bit for bit, and the weights where the mode says.

This machine has only a CPU, so the execution device and the host are the same device here. The
placement is checked anyway: `model` by recording every move `ModelOffload` makes (to the
execution device or to the host) and asserting, inside each network's forward, which networks
were sent where; `sequential` by running the streamed networks on the meta device with their
weights on the CPU (any tensor left on the wrong device makes the op raise, as on a GPU)."""

from __future__ import annotations

import pytest
import torch

from memo_pipeline import cli
from memo_pipeline.cli import Job, make_test_portrait, make_test_tone
from memo_pipeline.layers import CastingLayer
from memo_pipeline.loading import MemoModels
from memo_pipeline.models.motion_memory import MotionMemory
from memo_pipeline.models.reference_features import ReferenceFeatures
from memo_pipeline.offload import ModelOffload, OffloadError, apply_offload, check_offload, stream_layers
from memo_pipeline.pipeline import GenerationSettings
from memo_pipeline.state import GenerationState


def _job(tiny_bundle, tmp_path, name: str, **options) -> Job:
    image = make_test_portrait(tmp_path / "portrait.png", 128)
    audio = make_test_tone(tmp_path / "tone.wav", 0.3)  # 9 frames: 3 clips of 4, so every network runs again later
    settings = GenerationSettings(steps=2, guidance_scale=3.5, frames_per_clip=4, past_frames=4, init_past_frames=4, seed=7)
    return Job(tiny_bundle["memo"], tiny_bundle["vae"], tiny_bundle["wav2vec2"], image, audio, tmp_path / f"{name}.mp4",
               settings, resolution=64, allow_no_face=True, emotion="happy", progress=False,
               save_state=tmp_path / f"{name}.state", **options)


def _state_tensors(path) -> dict[str, torch.Tensor]:
    state = GenerationState.load(path)
    tensors = {f"kv.{k}": v for k, v in state.memory.kv.items()} | {f"z.{k}": v for k, v in state.memory.z.items()}
    return tensors | {"past_frames": state.past_frames}


def _video(path) -> bytes:
    import av

    with av.open(str(path)) as container:
        return b"".join(frame.to_ndarray(format="rgb24").tobytes() for frame in container.decode(video=0))


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_offload_gives_the_video_and_state_of_a_run_without_it_bit_for_bit(tiny_bundle, tmp_path, offload):
    cli.run(_job(tiny_bundle, tmp_path, "none"))
    cli.run(_job(tiny_bundle, tmp_path, offload, offload=offload))
    expected, got = _state_tensors(tmp_path / "none.state"), _state_tensors(tmp_path / f"{offload}.state")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert _video(tmp_path / "none.mp4") == _video(tmp_path / f"{offload}.mp4")


def test_offload_keeps_the_motion_memory_on_the_host_and_each_layer_reads_its_slot_onto_its_device(tiny_bundle, tmp_path,
                                                                                                   monkeypatch):
    """Under offload the memory is kept on the host (`MotionMemory.home`) and read onto the layer's
    device; without, it stays where the layers computed it. (Here both devices are the CPU: the
    bit-for-bit test above runs these moves; this one checks where they were asked to go.)"""
    kept, reads = [], []
    real_kept, real_read = MotionMemory._kept, MotionMemory.read
    monkeypatch.setattr(MotionMemory, "_kept", lambda self, tensor: kept.append(self.home) or real_kept(self, tensor))
    monkeypatch.setattr(MotionMemory, "read",
                        lambda self, name, device=None: reads.append(device) or real_read(self, name, device))
    cli.run(_job(tiny_bundle, tmp_path, "model", offload="model"))
    assert kept and set(kept) == {torch.device("cpu")}
    assert reads and set(reads) == {torch.device("cpu")}
    kept.clear()
    cli.run(_job(tiny_bundle, tmp_path, "none"))
    assert kept and set(kept) == {None}


def test_a_memory_kept_elsewhere_stores_each_absorbed_slot_there_and_reads_it_back_on_request():
    memory = MotionMemory(home=torch.device("meta"))
    kv, z = torch.rand(6, 4, 4), torch.rand(6, 1, 4)
    memory.absorb("layer", kv, z, 16)
    assert memory.kv["layer"].device.type == "meta" and memory.z["layer"].device.type == "meta"
    assert memory.slot_bytes() == kv.numel() * 4 + z.numel() * 4
    on_meta = memory.read("layer", torch.device("meta"))
    assert all(t.device.type == "meta" and t.shape == s.shape for t, s in zip(on_meta, (kv, z)))
    here = MotionMemory()
    here.absorb("layer", kv, z, 16)
    here.absorb("layer", kv, z, 16)
    assert torch.equal(here.read("layer")[0], kv * 0.9**16 + kv)


def _record_placement(monkeypatch, loaded_by_run: list):
    """Record each `ModelOffload.move` as 'device' or 'host' per network, and check the placement
    whenever a network (or a VAE / wav2vec2 part) starts its forward."""
    where: dict[int, str] = {}
    moves = []
    original = ModelOffload.move

    def recording(self, network, device):
        role = "device" if device is self.device else "host"
        where[id(network)] = role
        moves.append(role)
        original(self, network, device)

    monkeypatch.setattr(ModelOffload, "move", recording)
    real_load = cli.load_models
    seen = []

    def load_and_watch(job):
        loaded = real_load(job)
        groups = {"vae": loaded.vae.vae, "wav2vec2": loaded.encoder.model,
                  **{k: v for k, v in loaded.models.modules().items() if k != "emotion_classifier"}}

        def watch(name, module):
            def check(_module, _args):
                seen.append(name)
                placed = {other: where.get(id(network), "host") for other, network in groups.items()}
                assert placed[name] == "device", (name, placed)
                assert [other for other, at in placed.items() if at == "device"] == [name], placed

            return check

        for name, network in groups.items():
            parts = [network] if name not in ("vae", "wav2vec2") else list(network.children())
            for part in parts:
                part.register_forward_pre_hook(watch(name, part))
        loaded_by_run.append(loaded)
        return loaded

    monkeypatch.setattr(cli, "load_models", load_and_watch)
    return seen, moves


def test_model_offload_keeps_only_the_running_network_on_the_device(tiny_bundle, tmp_path, monkeypatch):
    loaded = []
    seen, moves = _record_placement(monkeypatch, loaded)
    cli.run(_job(tiny_bundle, tmp_path, "model", offload="model"))
    order = [name for i, name in enumerate(seen) if i == 0 or seen[i - 1] != name]
    # wav2vec2 first, then the projections, VAE, reference net, diffusion net, VAE decode, clip after clip
    assert order[0] == "wav2vec2" and {"image_proj", "audio_proj", "vae", "reference_net", "diffusion_net"} <= set(order)
    assert order.count("diffusion_net") == 3  # each clip brings it back once, not once per step
    assert moves.count("device") == len(order) and moves.count("host") == len(order) - 1
    assert loaded[0].models.device == torch.device("cpu")


def test_sequential_offload_runs_the_memo_networks_with_every_input_on_the_execution_device(tiny_bundle, tmp_path, monkeypatch):
    """Capture each MEMO network's inputs from a CPU run, then rerun every network with its layers'
    weights on the CPU and its inputs and other tensors on the meta device."""
    captured = {}
    real_load = cli.load_models

    def load_and_capture(job):
        loaded = real_load(job)
        for name, network in loaded.models.modules().items():
            def capture(_module, args, kwargs, name=name):
                captured.setdefault(name, (_to_meta(args), _to_meta(kwargs)))
            network.register_forward_pre_hook(capture, with_kwargs=True)
        return loaded

    monkeypatch.setattr(cli, "load_models", load_and_capture)
    cli.run(_job(tiny_bundle, tmp_path, "plain"))
    models = MemoModels.load(tiny_bundle["memo"], emotion_classifier=False)
    assert set(captured) == {"reference_net", "diffusion_net", "image_proj", "audio_proj"}
    for name, (args, kwargs) in captured.items():
        network = getattr(models, name)
        stream_layers(network, "meta")
        layers = [m for m in network.modules() if isinstance(m, CastingLayer)]
        assert layers and all(p.device.type == "cpu" for m in layers for p in m.parameters(recurse=False))
        others = [t for m in network.modules() if not isinstance(m, CastingLayer)
                  for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))]
        assert all(t.device.type == "meta" for t in others)
        if name == "diffusion_net":  # the CFG row mask decides a branch by value, which meta tensors lack
            args = args[:8] + (None,) + args[9:]
        with torch.no_grad():
            output = network(*args, **kwargs)
        tensors = [output] if torch.is_tensor(output) else []
        if isinstance(output, ReferenceFeatures):
            output.map(lambda t: tensors.append(t) or t)
        assert tensors and all(t.device.type == "meta" for t in tensors), name


def _to_meta(value):
    if torch.is_tensor(value):
        return value if value.dim() == 0 and value.device.type == "cpu" else value.to("meta")
    if isinstance(value, MotionMemory):
        return value.to("meta")
    if isinstance(value, ReferenceFeatures):
        return value.map(lambda t: t.to("meta"))
    if isinstance(value, tuple):
        return tuple(_to_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: None if k == "constants" else _to_meta(v) for k, v in value.items()}
    return value


def test_remove_takes_the_hooks_off_and_restores_the_device(tiny_bundle):
    models = MemoModels.load(tiny_bundle["memo"], emotion_classifier=False)
    group = apply_offload("model", "cpu", models)
    assert models.execution_device == torch.device("cpu")
    assert all(network._forward_pre_hooks for network in models.modules().values())
    group.remove()
    assert models.execution_device is None and group.active is None
    assert not any(network._forward_pre_hooks for network in models.modules().values())


def test_unknown_mode_and_layers_that_cannot_stream_are_refused():
    with pytest.raises(OffloadError, match="unknown offload mode 'layers'"):
        check_offload("layers")

    class Foreign(torch.nn.Linear):  # e.g. another package's layer class
        pass

    with pytest.raises(OffloadError, match="needs casting layers"):
        stream_layers(torch.nn.Sequential(Foreign(2, 2)), "cpu")


def test_generate_offload_option_reaches_the_job_and_batch_shares_it(tiny_bundle, tmp_path, monkeypatch):
    jobs = []
    monkeypatch.setattr(cli, "run", lambda job: jobs.append(job) or (_ for _ in ()).throw(ValueError("stop")))
    code = cli.main(["generate", "--checkpoint", str(tiny_bundle["memo"]), "--vae", str(tiny_bundle["vae"]),
                     "--wav2vec", str(tiny_bundle["wav2vec2"]), "--image", "i.png", "--audio", "a.wav",
                     "--out", str(tmp_path / "o.mp4"), "--offload", "sequential"])
    assert code == 2 and jobs[0].offload == "sequential"
    from memo_pipeline.batch.cli import template_job

    args = cli.build_parser().parse_args(["batch", "jobs.csv", "--out-dir", str(tmp_path), "--checkpoint", "c",
                                          "--vae", "v", "--wav2vec", "w", "--offload", "model"])
    assert template_job(args).offload == "model"
