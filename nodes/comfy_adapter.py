"""The one module of comfyui-memo that imports ComfyUI.

Every other module stays importable (and testable) without ComfyUI; nodes import
this module inside their functions. Written against ComfyUI 0.8.0.
"""
from __future__ import annotations

import os

try:
    import folder_paths
    import comfy.model_management as _mm
    import comfy.model_patcher as _patcher
    import comfy.utils as _cutils
    from comfy.cli_args import args as _comfy_args
    from comfy_api.latest import InputImpl as _InputImpl, Types as _Types
except ImportError as _exc:  # pragma: no cover - exercised by tests outside ComfyUI
    raise ImportError(
        "comfyui-memo: nodes/comfy_adapter.py only works inside a running ComfyUI "
        f"(could not import '{_exc.name}'). Install the pack into ComfyUI's "
        "custom_nodes folder, or put a ComfyUI checkout on sys.path."
    ) from _exc

import torch

from . import comfy_helpers as _helpers

# name -> (sub-folder of models/, extensions ComfyUI lists for it; empty = folders only)
MODEL_FOLDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "memo": ("memo", ()),                       # MEMO checkpoint folders (diffusion_net/, reference_net/, ...)
    "audio_encoders": ("audio_encoders", ()),   # core folder in 0.8.0; also holds wav2vec2 HF folders
    "emotion2vec": ("emotion2vec", ()),         # emotion2vec_plus_large folders
    "insightface": ("insightface", (".onnx",)), # face detector / landmark ONNX files
    "vocal_separator": ("vocal_separator", (".onnx",)),
}


def metadata_disabled() -> bool:
    """ComfyUI runs with --disable-metadata: saved files must not carry the prompt or workflow."""
    return bool(getattr(_comfy_args, "disable_metadata", False))


# ------------------------------------------------------------------ folders and paths

def register_model_folders() -> None:
    """Make ComfyUI know our model folders; safe to call more than once.

    Folders that ComfyUI or extra_model_paths.yaml already registered keep their
    paths; we only add the default models/<sub> path and our extensions.
    """
    for name, (sub, exts) in MODEL_FOLDERS.items():
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, sub))
        known = folder_paths.folder_names_and_paths[name][1]
        if exts and isinstance(known, set):
            known.update(exts)


def model_folder_paths(folder: str) -> list[str]:
    """All paths registered for a model folder name (default first)."""
    try:
        return folder_paths.get_folder_paths(folder)
    except KeyError:
        raise KeyError(f"model folder '{folder}' is not registered; call register_model_folders()") from None


def list_model_dirs(folder: str, marker: str) -> list[str]:
    """Sub-folders of a registered model folder that contain `marker` (a relative file path)."""
    return _helpers.find_model_dirs(model_folder_paths(folder), marker)


def list_memo_checkpoints() -> list[str]:
    """MEMO checkpoints: folders under models/memo holding diffusion_net/config.json."""
    return list_model_dirs("memo", _helpers.MEMO_MARKER)


def list_model_files(folder: str) -> list[str]:
    """ComfyUI's own (cached, extension-filtered) file list for a model folder."""
    return folder_paths.get_filename_list(folder)


def resolve_path(folder: str, name: str, kind: str = "any") -> str:
    """Absolute path of `name` (file or folder) inside a registered model folder."""
    return _helpers.resolve_in_roots(model_folder_paths(folder), name, kind)


def output_directory() -> str:
    return folder_paths.get_output_directory()


def temp_directory() -> str:
    return folder_paths.get_temp_directory()


def input_directory() -> str:
    return folder_paths.get_input_directory()


def save_path(filename_prefix: str, width: int = 0, height: int = 0) -> tuple[str, str, int, str]:
    """(folder, base filename, next free counter, subfolder) for a new output file.

    Same numbering as SaveImage/SaveVideo, so our files sort next to core outputs.
    """
    folder, filename, counter, subfolder, _prefix = folder_paths.get_save_image_path(
        filename_prefix, output_directory(), width, height)
    return folder, filename, counter, subfolder


# ------------------------------------------------------------------ VIDEO values

def make_video(images: torch.Tensor, fps: float, audio: dict | None = None):
    """A core VIDEO value (what CreateVideo outputs): IMAGE [T,H,W,3] 0..1 frames,
    optional AUDIO {'waveform': [1,C,S], 'sample_rate': int}, SaveVideo-compatible."""
    from fractions import Fraction
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"video frames must be [T,H,W,3], got {tuple(images.shape)}")
    components = _Types.VideoComponents(images=images, audio=audio,
                                        frame_rate=Fraction(round(float(fps) * 1000), 1000))
    return _InputImpl.VideoFromComponents(components)


def video_parts(video) -> tuple[torch.Tensor, dict | None, float]:
    """(frames [T,H,W,3], audio or None, fps) of any core VIDEO value (file or components)."""
    parts = video.get_components()
    return parts.images, parts.audio, float(parts.frame_rate)


# ------------------------------------------------------------------ progress and interrupts

class Progress:
    """Node progress (and optional preview frame) shown in ComfyUI's UI."""

    def __init__(self, total: int):
        self._bar = _cutils.ProgressBar(int(total))
        self.total = int(total)
        self.current = 0

    def update(self, n: int = 1, preview_image=None) -> None:
        """Advance by `n` steps; `preview_image` is a PIL image or a [H,W,C] frame in 0..1."""
        self.set(self.current + n, preview_image)

    def set(self, value: int, preview_image=None) -> None:
        self.current = min(int(value), self.total)
        preview = None
        if preview_image is not None:
            # ComfyUI's preview format: (image format, PIL image, longest side or None).
            preview = ("JPEG", _helpers.to_preview_pil(preview_image), _comfy_args.preview_size)
        self._bar.update_absolute(self.current, self.total, preview)


def progress_bar(total: int) -> Progress:
    return Progress(total)


def throw_if_interrupted() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel; call between steps."""
    _mm.throw_exception_if_processing_interrupted()


def processing_interrupted() -> bool:
    return _mm.processing_interrupted()


# ------------------------------------------------------------------ devices and dtypes

def torch_device() -> torch.device:
    """Where models run (CUDA/MPS/..., or CPU under --cpu)."""
    return _mm.get_torch_device()


def offload_device() -> torch.device:
    """Where idle model weights are parked (CPU unless --highvram/--gpu-only)."""
    return _mm.unet_offload_device()


def intermediate_device() -> torch.device:
    """Where IMAGE/AUDIO/LATENT tensors passed between nodes live."""
    return _mm.intermediate_device()


def intermediate_dtype() -> torch.dtype:
    """dtype of tensors passed between nodes; ComfyUI 0.8.0 uses float32 throughout."""
    return torch.float32


def model_dtype(device: torch.device | None = None, params: int = 0,
                supported=(torch.float16, torch.bfloat16, torch.float32)) -> torch.dtype:
    """ComfyUI's choice of weight dtype for a diffusion model on `device` (honours --fp16-unet etc.)."""
    return _mm.unet_dtype(device=device or torch_device(), model_params=params,
                          supported_dtypes=list(supported))


def vae_dtype(device: torch.device | None = None) -> torch.dtype:
    return _mm.vae_dtype(device or torch_device(), [torch.float16, torch.bfloat16, torch.float32])


def soft_empty_cache() -> None:
    _mm.soft_empty_cache()


# ------------------------------------------------------------------ model loading

class _Holder(torch.nn.Module):
    """ModelPatcher writes `.device` on its model; diffusers/transformers models expose a
    read-only `.device` property, so our modules ride inside this plain holder."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        super().__init__()
        self.wrapped = module
        self.device = device


_PATCHER_ATTR = "_comfyui_memo_patcher"


def patcher_for(module: torch.nn.Module):
    """The ModelPatcher that manages `module` (created once, then reused).

    Reusing one patcher per module lets ComfyUI recognise the model as already
    loaded instead of unloading and reloading it on every call.
    """
    patcher = getattr(module, _PATCHER_ATTR, None)
    if patcher is None:
        current = next(module.parameters(), None)
        device = current.device if current is not None else offload_device()
        patcher = _patcher.ModelPatcher(_Holder(module, device), load_device=torch_device(),
                                        offload_device=offload_device())
        object.__setattr__(module, _PATCHER_ATTR, patcher)
    return patcher


def load_models_to_gpu(modules, memory_required: int = 0) -> list:
    """Move our torch modules to the compute device through ComfyUI's model manager.

    ComfyUI then counts them against VRAM, frees other models to make room, and
    offloads ours when something else needs the space. Always a full load: our
    modules use plain torch layers, which ComfyUI's partial (lowvram) loading
    cannot cast on the fly. Returns the modules, now on torch_device().
    """
    modules = list(modules)
    patchers = [patcher_for(m) for m in modules]
    _mm.load_models_gpu(patchers, memory_required=int(memory_required), force_full_load=True)
    return modules


def unload_models(modules) -> int:
    """Offload the given modules back to offload_device(); returns how many were loaded."""
    wanted = {id(getattr(m, _PATCHER_ATTR, None)) for m in modules}
    done = 0
    for i in reversed(range(len(_mm.current_loaded_models))):
        loaded = _mm.current_loaded_models[i]
        if id(loaded.model) in wanted and loaded.model_unload():
            _mm.current_loaded_models.pop(i)
            done += 1
    return done


def is_loaded(module: torch.nn.Module) -> bool:
    """Whether ComfyUI currently lists `module` among its loaded models."""
    patcher = getattr(module, _PATCHER_ATTR, None)
    return patcher is not None and any(lm.model is patcher for lm in _mm.current_loaded_models)
