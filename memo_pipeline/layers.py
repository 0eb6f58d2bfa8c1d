"""The layer classes the MEMO networks are made of, and the dtype each of their weights is stored in.

The networks are built from diffusers blocks, which create plain torch layers (`nn.Linear`,
`nn.Conv2d`, `nn.GroupNorm`, ...). A run may want other classes for the same layers:

- `CastingLayers` (this module): weights stored in a smaller dtype (`weight_dtype`, e.g. fp8) or
  on another device, cast to the input's dtype and device inside each forward;
- ComfyUI's `comfy.ops` namespaces (`disable_weight_init`, `manual_cast`, ...), which the node layer
  supplies like ComfyUI's own `operations=` argument, so that ComfyUI's model management can leave
  part of a network's weights off the GPU and stream them layer by layer.

`use_layers(network, layers)` is the one injection point: it gives every plain torch layer of a
network the class of the same name in `layers`, in place. That equals building the network with
those classes, because such classes only add methods and class attributes, no constructor state:
parameters, buffers and state-dict keys stay the same objects and names. The CPU tuning
(`cpu_tuning.py`) works over any of these classes: it reads a layer's weights with `layer_weights`.

Which parameters keep the compute dtype whatever `weight_dtype` says is decided by
`storage_dtypes` (see `KEPT_IN_COMPUTE_DTYPE`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import is_fake

LAYER_CLASSES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm)
"""The torch layers `use_layers` replaces (the ones the MEMO networks and comfy.ops have)."""

WEIGHT_DTYPES: dict[str, torch.dtype | None] = {
    "default": None,  # the compute dtype
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
"""Weight storage dtypes by the names ComfyUI's diffusion-model loader uses."""

STORED_LAYER_CLASSES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Layers whose weight may be stored in `weight_dtype`: nearly all of a UNet's bytes."""

KEPT_IN_COMPUTE_DTYPE = (nn.GroupNorm, nn.LayerNorm)
"""Layers whose parameters always keep the compute dtype: the normalisations. Parameters outside
any layer class above (embedding tables, positional tables) keep it too, because no casting
forward reads them.

What is kept was measured (`bench/precision_groups.py`, golden full-pipeline case: the official
fixture's weights, compute in fp32, one group at a time stored in fp8_e4m3fn while everything else
stays fp32; PSNR of the video against all-fp32, share of the generation networks' parameter bytes):

    norms (GroupNorm, LayerNorm)        28.5 dB   0.7 %   kept
    conv_in / conv_out of both UNets    36.2 dB   0.3 %   kept (KEPT_LAYER_NAMES)
    biases of every layer               40.5 dB   1.2 %   kept (KEPT_PARAMETER_NAMES)
    image projection network            40.7 dB   0.2 %   kept (KEPT_NETWORKS)
    time embedding + time_emb_proj      44.1 dB  10.6 %   stored
    emotion modulation (adaLN linears)  53.4 dB   2.1 %   stored

A group is kept where it is cheap (under 2 % of the bytes) and costs more than a few dB on its
own; the rest is stored (the big groups, attention, feed-forward and resnet convolutions, hold the
bytes the weight dtype exists to shrink). The motion memory is not a weight: it is data written
during the generation, in fp32 (`GenerationSettings.memory_fp32`, the default) or the compute
dtype, whatever the weight dtype."""

KEPT_LAYER_NAMES = ("conv_in", "conv_out")
"""Top-level layers of a network whose parameters keep the compute dtype: the UNets' first and last
convolutions, which map to and from the latents (a small share of the bytes, a large share of the error)."""

KEPT_PARAMETER_NAMES = ("bias",)
"""Parameters that keep the compute dtype in every layer: the biases (1 % of the bytes)."""

KEPT_NETWORKS = ("image_proj", "emotion_classifier")
"""Networks (`loading.COMPONENTS` names) whose weights keep their dtype whatever `weight_dtype`
says: the image projection (0.2 % of the bytes, 40.7 dB alone in fp8) and the emotion
classifier, which labels audio in fp32."""


def network_weight_dtype(network_name: str, weight_dtype):
    """The weight dtype a network of `loading.COMPONENTS` stores its layers in: None (its own /
    the compute dtype) for `KEPT_NETWORKS`."""
    return None if network_name in KEPT_NETWORKS else weight_dtype


class WeightDtypeError(ValueError):
    """An unknown weight dtype name."""


def resolve_weight_dtype(name) -> torch.dtype | None:
    """`WEIGHT_DTYPES[name]` (None for "default" or None); a torch dtype passes through."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if str(name) not in WEIGHT_DTYPES:
        raise WeightDtypeError(f"unknown weight dtype '{name}'; use one of {', '.join(WEIGHT_DTYPES)}")
    return WEIGHT_DTYPES[str(name)]


def weight_dtype_name(dtype: torch.dtype | None) -> str:
    """The `WEIGHT_DTYPES` name of a dtype (None: "default")."""
    for name, value in WEIGHT_DTYPES.items():
        if value == dtype:
            return name
    raise WeightDtypeError(f"{dtype} is not a weight dtype; use one of {', '.join(WEIGHT_DTYPES)}")


E4M3FN_CHUNK = 1 << 20
"""Elements `_e4m3fn_to` converts per pass: its integer temporaries stay a few megabytes (about 9
bytes per element in all) instead of the size of the largest weight."""


def _e4m3fn_to(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float8_e4m3fn CPU tensor in `dtype`, exactly as `tensor.to(dtype)` but about 4x faster
    (torch converts this format one element at a time on the CPU; `bench/weight_casts.py` times it).

    The sign bit and the 7 exponent-and-mantissa bits, placed in float16's sign field and (shifted
    by 7) in its exponent and mantissa fields, read as the value times 2^-8: the exponent biases
    differ by 8, and both formats' subnormals are the same fixed-point fractions. Every e4m3fn
    value times 2^-8 is exact in float16, and so is the product by 256 in any float dtype. The two
    NaN codes are mapped to NaN explicitly. Converted `E4M3FN_CHUNK` elements at a time into the
    result, so that only the result is as large as the weight."""
    codes = tensor.contiguous().view(torch.int8).reshape(-1)
    out = torch.empty(codes.shape, dtype=dtype)
    for start in range(0, codes.numel(), E4M3FN_CHUNK):
        code = codes[start:start + E4M3FN_CHUNK].to(torch.int16)  # sign-extended: bits 15..7 copy the sign
        magnitude = code & 0x7F
        half = ((code << 7) & -0x8000) | (magnitude << 7)
        part = out[start:start + E4M3FN_CHUNK]
        part.copy_(half.view(torch.float16)).mul_(256.0)
        part.masked_fill_(magnitude == 0x7F, float("nan"))
    return out.view(tensor.shape)


def cast_weight(tensor: torch.Tensor | None, dtype: torch.dtype, device) -> torch.Tensor | None:
    """`tensor.to(device, dtype)`, with the fast path `_e4m3fn_to` for float8_e4m3fn on the CPU."""
    if tensor is None:
        return None
    if tensor.dtype == torch.float8_e4m3fn and dtype != tensor.dtype and tensor.device.type == "cpu" and not is_fake(tensor):
        tensor = _e4m3fn_to(tensor, dtype)  # a memory plan's fake tensors take the one-op cast: same result, far fewer ops
    return tensor.to(device=device, dtype=dtype, non_blocking=True)


def _cast_like(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return cast_weight(tensor, like.dtype, like.device)


class CastingLayer:
    """Mixin for a torch layer whose forward reads its weight and bias cast to the input's dtype and
    device. Where they already match, `.to` returns the same tensors and the forward computes what
    the plain layer computes."""

    def cast_weight_bias(self, input: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return _cast_like(self.weight, input), _cast_like(self.bias, input)


class CastingLayers:
    """Layer classes for `use_layers` that store weights in any dtype or device and cast per forward."""

    class Linear(CastingLayer, nn.Linear):
        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return F.linear(input, *self.cast_weight_bias(input))

    class _Conv(CastingLayer):
        """The forward of the three convolutions (each torch class has its own `_conv_forward`)."""

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return self._conv_forward(input, *self.cast_weight_bias(input))

    class Conv1d(_Conv, nn.Conv1d):
        pass

    class Conv2d(_Conv, nn.Conv2d):
        pass

    class Conv3d(_Conv, nn.Conv3d):
        pass

    class GroupNorm(CastingLayer, nn.GroupNorm):
        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return F.group_norm(input, self.num_groups, *self.cast_weight_bias(input), self.eps)

    class LayerNorm(CastingLayer, nn.LayerNorm):
        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return F.layer_norm(input, self.normalized_shape, *self.cast_weight_bias(input), self.eps)


def use_layers(network: nn.Module, layers) -> nn.Module:
    """Give every plain torch layer of `network` (`LAYER_CLASSES`, exact type) the class of the same
    name in the namespace `layers`, in place; returns `network`.

    `layers` is `CastingLayers`, a comfy.ops namespace, or anything with such attributes; each
    replacement must subclass the torch class it replaces (so isinstance checks keep holding).
    Layers already of another class are left alone, so calling it twice is harmless."""
    for module in network.modules():
        plain = type(module)
        if plain not in LAYER_CLASSES:
            continue
        replacement = getattr(layers, plain.__name__, None)
        if replacement is None:
            raise TypeError(f"{getattr(layers, '__name__', layers)!r} has no {plain.__name__} class")
        if not issubclass(replacement, plain):
            raise TypeError(f"{replacement.__qualname__} does not subclass {plain.__qualname__}")
        module.__class__ = replacement
    return network


def layer_weights(layer: nn.Module, input: torch.Tensor):
    """The (weight, bias) a layer's own forward would compute `input` with, or None when that
    forward does more than use its parameters (then only its own forward may run).

    A comfy.ops layer (it has `comfy_cast_weights`) casts its weights when ComfyUI sets that flag (a
    layer left off the GPU by a partial load, or stored in another dtype). Where its cast forward is
    ComfyUI's stock one (`disable_weight_init.<Layer>.forward_comfy_cast_weights`, which
    `manual_cast` inherits: weight and bias `.to` the input's dtype and device, then the plain op),
    with no weight or bias functions (LoRA patches) and plain tensors (no quantized subclass), the
    same cast is done here, so a partially loaded network computes what a fully loaded one does.
    Any other cast forward (fp8 matmul ops, patches, quantized weights) returns None."""
    functions = getattr(layer, "weight_function", None) or getattr(layer, "bias_function", None)
    if functions:
        return None
    if getattr(layer, "comfy_cast_weights", False):
        cast_forward = getattr(type(layer), "forward_comfy_cast_weights", None)
        torch_class = next((c for c in type(layer).__mro__ if c in LAYER_CLASSES), None)
        stock = torch_class is not None and getattr(cast_forward, "__qualname__", "") == \
            f"disable_weight_init.{torch_class.__name__}.forward_comfy_cast_weights"
        plain = all(t is None or type(t) in (torch.Tensor, nn.Parameter) for t in (layer.weight, layer.bias))
        if not (stock and plain):
            return None
        return _cast_like(layer.weight, input), _cast_like(layer.bias, input)
    if isinstance(layer, CastingLayer):
        return layer.cast_weight_bias(input)
    return layer.weight, layer.bias


def storage_dtypes(network: nn.Module, weight_dtype: torch.dtype | None, compute_dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The dtype each parameter and floating buffer of `network` is stored in (by state-dict name):
    `weight_dtype` for the weights of `STORED_LAYER_CLASSES` layers, the compute dtype for what the
    measurements keep (`KEPT_IN_COMPUTE_DTYPE`, `KEPT_LAYER_NAMES`, `KEPT_PARAMETER_NAMES`) and for
    everything outside those layers. With `weight_dtype` None every entry is the compute dtype.
    (Whole networks that keep their dtype: `network_weight_dtype`.)"""
    stored = weight_dtype or compute_dtype
    dtypes = {}
    for prefix, module in network.named_modules():
        keep = not isinstance(module, STORED_LAYER_CLASSES) or isinstance(module, KEPT_IN_COMPUTE_DTYPE) \
            or prefix in KEPT_LAYER_NAMES
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if tensor is None or not tensor.is_floating_point():
                continue
            kept = keep or name in KEPT_PARAMETER_NAMES
            dtypes[f"{prefix}.{name}" if prefix else name] = compute_dtype if kept else stored
    return dtypes


def to_storage_dtype(tensor: torch.Tensor, dtype: torch.dtype, in_place: bool = False) -> torch.Tensor:
    """`tensor` in `dtype`; float8 values beyond the format's range are clamped to its largest
    finite value first (a plain cast makes them infinite in e5m2; e4m3fn has no infinity). `in_place`:
    the clamp may overwrite `tensor` (a buffer the caller owns) instead of allocating a copy of its size."""
    if tensor.dtype == dtype:
        return tensor
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2) and tensor.is_floating_point():
        limit = torch.finfo(dtype).max
        tensor = tensor.clamp_(-limit, limit) if in_place else tensor.clamp(-limit, limit)
    return tensor.to(dtype)
