"""Offload: run the networks on one device while their weights wait on another (the host's memory).

Three modes, chosen by whoever owns the run (`generate --offload`, `apply_offload`):

- `none`: every network is loaded on the execution device (what the library always did).
- `model`: the networks are loaded on the host; the one about to run is moved to the execution
  device whole, and the one that ran before goes back (`ModelOffload`). A generation runs
  wav2vec2, then the projections, the VAE (reference image), the reference net, the diffusion net
  (every step of a clip), the VAE again (decode), ... so at most one network's weights occupy the
  device at a time, at the cost of one host-to-device copy per change of network.
- `sequential`: the layers of the MEMO networks (reference net, diffusion net, projections) keep
  their weights on the host and receive them per forward: the casting layers (`layers.CastingLayers`)
  cast weight and bias to the input's device and dtype in each forward, so a layer's weights exist
  on the device only while that layer runs. Their few tensors outside any layer class (embedding
  and positional tables, a few MB) are moved to the device (`stream_layers`). The VAE and wav2vec2
  are offloaded as in `model` (each is under 0.4 GB in fp32 and their activations, not weights,
  dominate), because their adapters place inputs by their own parameters' device.

The execution device is what `MemoModels.device` reports (`MemoModels.execution_device`), so the
pipeline prepares its inputs there. In both modes the motion memory waits on the host too
(`MemoModels.motion_memory_home`): at 512 px it is larger than the networks (14 GB in float32
with CFG), and each temporal layer brings only its own slot to the device while it runs. The emotion classifier, which labels audio next to
emotion2vec on the host, stays there. Outputs do not depend on the mode: moving a tensor
between devices copies its bits, and a casting layer whose weight already has the input's dtype
and device computes what the plain layer computes (tests/test_offload.py checks both bit for bit).

Why no accelerate hooks (`cpu_offload_with_hook` for `model`, `cpu_offload` for `sequential`),
measured with `python bench/offload_hooks.py --resolution 32 --repeats 5` on this project's shared
2-core CPU machine (execution device = host, so only the hooks' own work is timed):

- `sequential`: accelerate's `cpu_offload` puts an `AlignDevicesHook` on every module with
  parameters (1,251 in the full-size diffusion net): before each forward it copies the module's
  tensors from a host state dict onto the device and moves the inputs, after it resets the
  parameters to the meta device. Those hooks alone took 137 us per module, 172 ms per diffusion-net
  forward (one per denoising step); the casting layers' two casts took 3.8 us per
  layer, 5 ms per forward. (Whole small-config forwards at 32 px were 3.5 s plain, 3.2 s casting,
  3.4 s accelerate: on this loaded machine the run-to-run spread exceeds either overhead; all three
  outputs were bit-identical.) accelerate also leaves the parameters on the meta device between
  forwards, which `MemoModels.device`, saving, fingerprints and the CPU tuning (it leaves alone a
  module whose forward someone else replaced) all read, and it knows nothing of stored weight
  dtypes, which the casting layers handle already.
- `model`: accelerate's `CpuOffload` hook calls `module.to(device)` before every forward, a walk
  over every parameter even when nothing moves: 41 ms per forward on the full-size diffusion net,
  against 0.05 us for `ModelOffload.activate`, which compares names.
- accelerate is not among the pack's dependencies (requirements.txt); this module costs less than
  a new install in every ComfyUI environment.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from .layers import LAYER_CLASSES, CastingLayer, CastingLayers, use_layers

OFFLOAD_MODES = ("none", "model", "sequential")
HOST = torch.device("cpu")


class OffloadError(ValueError):
    """An offload mode that does not exist or cannot apply to the networks given."""


def check_offload(mode: str) -> str:
    if mode not in OFFLOAD_MODES:
        raise OffloadError(f"unknown offload mode '{mode}'; use one of {', '.join(OFFLOAD_MODES)}")
    return mode


def load_device(mode: str, device) -> torch.device:
    """Where the networks are loaded for `mode`: the host unless offload is off."""
    return torch.device(device) if check_offload(mode) == "none" else HOST


class ModelOffload:
    """Keeps at most one of its networks on the execution device: before a network runs, the one
    that ran before goes back to the host and this one comes to the device.

    A network joins with `add_network` (it runs through its forward: a forward pre-hook) or
    `add_adapter` (an object such as the VAE adapter whose methods run the network's submodules:
    those methods are wrapped on the instance). A `resident` network is never moved (its layers
    stream their own weights): running it only sends the previous one home. `remove` undoes it all.
    """

    def __init__(self, device, host=HOST):
        self.device, self.host = torch.device(device), torch.device(host)
        self.networks: dict[str, tuple[nn.Module, bool]] = {}
        self.active: str | None = None
        self._undo: list[Callable[[], None]] = []

    def add_network(self, name: str, network: nn.Module, resident: bool = False) -> None:
        self.networks[name] = (network, resident)
        hook = network.register_forward_pre_hook(lambda _module, _args: self.activate(name))
        self._undo.append(hook.remove)

    def add_adapter(self, name: str, adapter, network: nn.Module, methods: tuple[str, ...]) -> None:
        self.networks[name] = (network, False)
        for method in methods:
            bound = getattr(type(adapter), method).__get__(adapter)

            @functools.wraps(bound)
            def run(*args, _bound=bound, **kwargs):
                self.activate(name)
                return _bound(*args, **kwargs)

            setattr(adapter, method, run)
            self._undo.append(functools.partial(delattr, adapter, method))

    def move(self, network: nn.Module, device: torch.device) -> None:
        """Move parameters and buffers, keeping each one's dtype (stored weight dtypes survive)."""
        nn.Module.to(network, device=device)

    def activate(self, name: str) -> None:
        """Make `name` the network on the device (nothing happens when it already is)."""
        if self.active == name:
            return
        if self.active is not None:
            network, resident = self.networks[self.active]
            if not resident:
                self.move(network, self.host)
        network, resident = self.networks[name]
        if not resident:
            self.move(network, self.device)
        self.active = name

    def on_remove(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def remove(self) -> None:
        """Remove the hooks and wrappers and send the active network home."""
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        if self.active is not None:
            network, resident = self.networks[self.active]
            if not resident:
                self.move(network, self.host)
        self.active = None


def stream_layers(network: nn.Module, device) -> nn.Module:
    """Sequential offload of one network: its torch layers become casting layers whose weights stay
    where they are (the host) and are cast onto the input's device per forward; every other
    parameter and buffer (tables read outside any layer's forward) moves to `device`."""
    use_layers(network, CastingLayers)
    plain = [type(m).__name__ for m in network.modules() if isinstance(m, LAYER_CLASSES) and not isinstance(m, CastingLayer)]
    if plain:
        raise OffloadError(f"sequential offload needs casting layers; {type(network).__name__} has other "
                           f"layer classes ({', '.join(sorted(set(plain)))})")
    device = torch.device(device)
    for module in network.modules():
        if isinstance(module, CastingLayer):
            continue
        module._apply(lambda tensor: tensor.to(device), recurse=False)  # what `nn.Module.to` does, this module only
    return network


def apply_offload(mode: str, device, models, vae=None, encoder=None) -> ModelOffload | None:
    """Offload `models` (a `MemoModels` loaded on the host, see `load_device`), the VAE adapter and
    the wav2vec2 encoder adapter for running on `device`; None for mode "none". The returned
    `ModelOffload`'s `remove()` takes the hooks off again."""
    if check_offload(mode) == "none":
        return None
    device = torch.device(device)
    group = ModelOffload(device)
    for name, network in models.modules().items():
        if name == "emotion_classifier":
            continue  # labels audio on the host, next to emotion2vec
        if mode == "sequential":
            stream_layers(network, device)
        group.add_network(name, network, resident=mode == "sequential")
    if vae is not None:
        group.add_adapter("vae", vae, vae.vae, ("encode", "decode"))
    if encoder is not None:
        group.add_adapter("wav2vec2", encoder, encoder.model, ("conv_features", "encode"))
    models.execution_device, models.motion_memory_home = device, HOST
    group.on_remove(lambda: (setattr(models, "execution_device", None), setattr(models, "motion_memory_home", None)))
    return group
