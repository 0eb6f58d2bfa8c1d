"""Loader nodes: MEMO checkpoint, wav2vec2 audio encoder, emotion detector, face models.

Each loader takes names from a ComfyUI model folder (listed through the host, see host.py) and
returns one of our MEMO_* objects. ComfyUI caches a loader's output for as long as its inputs stay
the same, so the loaders define no IS_CHANGED. Weights are loaded to the offload device (the CPU);
the nodes that run a model move it to the GPU through ComfyUI's model manager when they need it.

Choice strings name a path relative to ComfyUI's models/ folder, e.g. ``memo/memo-release`` or
``insightface/models/antelopev2``; the part before the first '/' is the model folder.
"""

from __future__ import annotations

import os

from . import host as host_mod
from .common import DTYPES, logger, user_errors
from ..memo_pipeline.attention_backend import BACKENDS as ATTENTION_BACKENDS
from .comfy_helpers import MEMO_MARKER
from .memo_types import (
    MemoAudioEncoder,
    MemoEmotionModel,
    MemoFaceModel,
    MemoModel,
)

CLASSIFIER_SUBDIR = "misc/audio_emotion_classifier"
VOCAL_SUBPATH = "misc/vocal_separator/Kim_Vocal_2.onnx"
HAAR_CHOICE = "opencv-haar (crop only, no identity)"
AUDIO_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
EMOTION2VEC_FILES = ("model.safetensors", "model.pt")


# What each loader input needs (named in the error when it is not found) and the `models fetch --only` feature.
NEEDED_FILES = {
    "checkpoint": ("the MEMO release folder memo/memo (reference_net/, diffusion_net/, image_proj/, audio_proj/ "
                   "of memoavatar/memo)", "core"),
    "audio_encoder": ("wav2vec2-base-960h (config.json, model.safetensors, preprocessor_config.json) in "
                      "audio_encoders/wav2vec2-base-960h", "core"),
    "emotion2vec": ("emotion2vec_plus_large (config.yaml + model.pt) in emotion2vec/emotion2vec_plus_large", "emotion"),
    "classifier_checkpoint": ("misc/audio_emotion_classifier/ of the MEMO release", "emotion"),
    "face_models": ("scrfd_10g_bnkps.onnx and glintr100.onnx (misc/face_analysis/models/ of the MEMO release, "
                    "or insightface/models/antelopev2/)", "face"),
    "model": ("Kim_Vocal_2.onnx (misc/vocal_separator/ of the MEMO release, or vocal_separator/)", "vocals"),
}


def missing_files_hint(input_name: str, folders: tuple[str, ...]) -> str:
    """Which files the input needs, the folders searched and the commands that find / fetch them."""
    from ..memo_pipeline.model_files import missing_hint

    files, feature = NEEDED_FILES.get(input_name, ("its model files", "core"))
    roots = [root for folder in folders for root in safe_list(lambda f=folder: host_mod.get_host().model_roots(f))]
    models_dir = os.path.dirname(os.path.normpath(roots[0])) if roots else None
    return missing_hint(files, roots, feature, models_dir)


NOT_FOUND = "(none found) "


def choices_or_hint(fn, input_name: str, folders: tuple[str, ...]) -> list[str]:
    """The model list, or, when it is empty, one entry saying what is missing, where it was searched and
    the command that fetches it: ComfyUI checks a workflow's value against this list before the node
    runs, and its "Value not in list" error prints the list."""
    return safe_list(fn) or [NOT_FOUND + input_name + " " + missing_files_hint(input_name, folders)]


def checkpoint_options() -> list[str]:
    return choices_or_hint(memo_checkpoints, "checkpoint", (host_mod.MEMO_FOLDER,))


def audio_encoder_options() -> list[str]:
    return choices_or_hint(audio_encoder_choices, "audio_encoder", (host_mod.AUDIO_ENCODER_FOLDER,))


def emotion2vec_options() -> list[str]:
    return choices_or_hint(emotion2vec_choices, "emotion2vec", (host_mod.EMOTION2VEC_FOLDER,))


def classifier_options() -> list[str]:
    return choices_or_hint(lambda: _memo_with(CLASSIFIER_SUBDIR), "classifier_checkpoint", (host_mod.MEMO_FOLDER,))


def face_model_options() -> list[str]:
    """Listed without a hint entry: the Haar choice (when OpenCV runs) needs no files."""
    return safe_list(face_model_choices)


def vocal_model_options() -> list[str]:
    return choices_or_hint(vocal_model_choices, "model", (host_mod.VOCAL_FOLDER, host_mod.MEMO_FOLDER))


def split_choice(choice: str, input_name: str, allowed: tuple[str, ...] = ()) -> tuple[str, str]:
    """'folder/rest' -> ('folder', 'rest'); a bare 'folder' means the folder itself ('.')."""
    if not isinstance(choice, str) or not choice.strip() or choice.startswith(NOT_FOUND):
        raise ValueError(f"input '{input_name}': no model was found to pick from the list; "
                         + missing_files_hint(input_name, allowed))
    folder, _, rest = choice.strip().partition("/")
    return folder, rest or "."


def resolve_choice(choice: str, input_name: str, allowed: tuple[str, ...], kind: str = "any") -> str:
    folder, rest = split_choice(choice, input_name, allowed)
    if folder not in allowed:
        raise ValueError(f"input '{input_name}': '{choice}' is not under models/{' or models/'.join(allowed)}")
    try:
        return host_mod.get_host().resolve(folder, rest, kind)
    except ValueError as exc:
        raise ValueError(f"input '{input_name}': {exc}. It {missing_files_hint(input_name, (folder,))}") from exc


def safe_list(fn) -> list[str]:
    """Model lists are built when the editor asks for node definitions; a broken folder must not
    take every MEMO node down with it."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - logged, the list is just empty
        logger.warning("comfyui-memo: could not list models: %s", exc)
        return []


def memo_checkpoints(marker: str = MEMO_MARKER) -> list[str]:
    return [f"{host_mod.MEMO_FOLDER}/{name}" for name in host_mod.get_host().list_model_dirs(host_mod.MEMO_FOLDER, marker)]


def _memo_with(subpath: str) -> list[str]:
    host = host_mod.get_host()
    found = []
    for name in host.list_model_dirs(host_mod.MEMO_FOLDER, MEMO_MARKER):
        for root in host.model_roots(host_mod.MEMO_FOLDER):
            if os.path.exists(os.path.join(root, name, subpath)):
                found.append(f"{host_mod.MEMO_FOLDER}/{name}")
                break
    return found


def audio_encoder_choices() -> list[str]:
    host = host_mod.get_host()
    folder = host_mod.AUDIO_ENCODER_FOLDER
    dirs = host.list_model_dirs(folder, "config.json")
    files = [f for f in host.list_model_files(folder, AUDIO_WEIGHT_SUFFIXES) if not any(f.startswith(d + "/") for d in dirs)]
    return [f"{folder}/{name}" for name in sorted(set(dirs) | set(files), key=str.lower)]


def emotion2vec_choices() -> list[str]:
    host = host_mod.get_host()
    folder = host_mod.EMOTION2VEC_FOLDER
    names = set()
    for marker in EMOTION2VEC_FILES:
        names.update(host.list_model_dirs(folder, marker))
    return [f"{folder}/{name}" for name in sorted(names, key=str.lower)]


def face_model_choices() -> list[str]:
    from ..memo_pipeline.face import DETECTOR_FILE, find_face_models

    host = host_mod.get_host()
    choices = []
    for folder in (host_mod.MEMO_FOLDER, host_mod.FACE_FOLDER):
        candidates = [] if folder == host_mod.MEMO_FOLDER else ["."]
        candidates += host.list_model_dirs(folder, MEMO_MARKER if folder == host_mod.MEMO_FOLDER else DETECTOR_FILE)
        if folder == host_mod.FACE_FOLDER:
            candidates += host.list_model_dirs(folder, os.path.join("models", DETECTOR_FILE))
        for name in dict.fromkeys(candidates):
            for root in host.model_roots(folder):
                detector, recognizer = find_face_models(os.path.join(root, name))
                if detector and recognizer:
                    choices.append(folder if name == "." else f"{folder}/{name}")
                    break
    return choices + ([HAAR_CHOICE] if haar_unavailable_reason() is None else [])


def haar_unavailable_reason() -> str | None:
    """Why the OpenCV Haar choice is not offered (OpenCV is optional), or None when it works here."""
    from ..memo_pipeline.face import haar_unavailable_reason as reason

    return reason()


def vocal_model_choices() -> list[str]:
    host = host_mod.get_host()
    files = [f"{host_mod.VOCAL_FOLDER}/{name}" for name in host.list_model_files(host_mod.VOCAL_FOLDER, (".onnx",))]
    return files + [f"{name}/{VOCAL_SUBPATH}" for name in _memo_with(VOCAL_SUBPATH)]


def resolve_dtype_choice(dtype: str, input_name: str = "dtype") -> str:
    if dtype == "auto":
        import torch

        # bf16 (the release dtype) where the host's device has it, else fp32: MEMO is not known to be fp16-safe.
        chosen = host_mod.get_host().model_dtype((torch.bfloat16, torch.float32))
        return "bf16" if chosen == torch.bfloat16 else "fp32"
    if dtype not in DTYPES:
        raise ValueError(f"input '{input_name}' must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return dtype


def resolve_weight_dtype_choice(weight_dtype: str, input_name: str = "weight_dtype"):
    """The torch dtype (None for "default") of a `memo_pipeline.layers.WEIGHT_DTYPES` name."""
    from ..memo_pipeline.layers import WEIGHT_DTYPES, WeightDtypeError, resolve_weight_dtype

    try:
        return resolve_weight_dtype(weight_dtype)
    except WeightDtypeError:
        raise ValueError(f"input '{input_name}' must be one of {', '.join(WEIGHT_DTYPES)}; got {weight_dtype!r}") from None


class MemoModelLoader:
    """The work of MEMO Model Loader; its inputs and outputs are declared in comfy_nodes.py."""

    def load(self, checkpoint, dtype="auto", attention="sdpa", weight_dtype="default"):
        from ..memo_pipeline.loading import MemoModels, resolve_dtype

        path = resolve_choice(checkpoint, "checkpoint", (host_mod.MEMO_FOLDER,), "dir")
        dtype = resolve_dtype_choice(dtype)
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"input 'attention' must be one of {', '.join(ATTENTION_BACKENDS)}, got {attention!r}")
        stored = resolve_weight_dtype_choice(weight_dtype)
        host = host_mod.get_host()
        # the host's layer classes (comfy.ops inside ComfyUI, so its model management can split a network)
        layers = host.layer_classes(stored, resolve_dtype(dtype))
        with user_errors(f"checkpoint '{checkpoint}'"):
            models = MemoModels.load(path, dtype=dtype, device=host.offload_device(), emotion_classifier=False,
                                     weight_dtype=stored, layers=layers)
        set_attention(models, attention)
        return (MemoModel(models, checkpoint, dtype, attention, weight_dtype),)


def set_attention(models, backend: str) -> None:
    from ..memo_pipeline.attention_backend import use_attention_kernels

    try:
        use_attention_kernels(models, backend)
    except RuntimeError as exc:  # xformers missing / no CUDA
        raise ValueError(f"input 'attention': {exc}") from exc


class MemoAudioEncoderLoader:
    """The work of MEMO Audio Encoder Loader; its inputs and outputs are declared in comfy_nodes.py."""

    def load(self, audio_encoder, dtype="fp32"):
        from ..memo_pipeline.audio.features import Wav2Vec2AudioEncoder
        from ..memo_pipeline.loading import resolve_dtype

        path = resolve_choice(audio_encoder, "audio_encoder", (host_mod.AUDIO_ENCODER_FOLDER,))
        with user_errors(f"audio_encoder '{audio_encoder}'"):
            encoder = Wav2Vec2AudioEncoder.from_pretrained(path, device=host_mod.get_host().offload_device(),
                                                           dtype=resolve_dtype(dtype))
        return (MemoAudioEncoder(encoder, audio_encoder),)


class MemoEmotionModelLoader:
    """The work of MEMO Emotion Model Loader; its inputs and outputs are declared in comfy_nodes.py."""

    def load(self, emotion2vec, classifier_checkpoint, dtype="fp32"):
        from ..memo_pipeline.audio.emotion2vec import Emotion2Vec
        from ..memo_pipeline.loading import COMPONENTS, load_component, resolve_dtype

        folder = resolve_choice(emotion2vec, "emotion2vec", (host_mod.EMOTION2VEC_FOLDER,))
        weights = folder
        if os.path.isdir(folder):
            found = [os.path.join(folder, n) for n in EMOTION2VEC_FILES if os.path.isfile(os.path.join(folder, n))]
            if not found:
                raise ValueError(f"input 'emotion2vec': {folder} holds neither {' nor '.join(EMOTION2VEC_FILES)}; it "
                                 + missing_files_hint("emotion2vec", (host_mod.EMOTION2VEC_FOLDER,)))
            weights = found[0]
        device, torch_dtype = host_mod.get_host().offload_device(), resolve_dtype(dtype)
        with user_errors(f"emotion2vec '{emotion2vec}'"):
            backbone = Emotion2Vec.from_checkpoint(weights, device=device, dtype=torch_dtype)
        root = resolve_choice(classifier_checkpoint, "classifier_checkpoint", (host_mod.MEMO_FOLDER,), "dir")
        sub, cls, _ = COMPONENTS["emotion_classifier"]
        with user_errors(f"classifier_checkpoint '{classifier_checkpoint}'"):
            if not os.path.isdir(os.path.join(root, sub)):
                raise ValueError(f"{root} has no {sub}/ (the emotion classifier of the MEMO release); it "
                                 + missing_files_hint("classifier_checkpoint", (host_mod.MEMO_FOLDER,)))
            classifier = load_component(os.path.join(root, sub), cls, dtype=torch_dtype, device=device)
        return (MemoEmotionModel(backbone, classifier, f"{emotion2vec} + {classifier_checkpoint}"),)


class MemoFaceModelLoader:
    """The work of MEMO Face Model Loader; its inputs and outputs are declared in comfy_nodes.py."""

    def load(self, face_models, detection_size=640, device="auto"):
        from ..memo_pipeline.face import FaceAnalyzer, find_face_models

        providers = ["CPUExecutionProvider"] if device == "cpu" else None
        if face_models == HAAR_CHOICE:
            problem = haar_unavailable_reason()
            if problem:
                raise ValueError(f"input 'face_models': {problem}")
            with user_errors("face_models"):
                return (MemoFaceModel(FaceAnalyzer(providers=providers), face_models),)
        root = resolve_choice(face_models, "face_models", (host_mod.MEMO_FOLDER, host_mod.FACE_FOLDER), "dir")
        detector, recognizer = find_face_models(root)
        if detector is None or recognizer is None:
            raise ValueError(f"input 'face_models': {root} lacks "
                             f"{'scrfd_10g_bnkps.onnx' if detector is None else 'glintr100.onnx'}; it "
                             + missing_files_hint("face_models", (host_mod.MEMO_FOLDER, host_mod.FACE_FOLDER)))
        if detection_size % 32:
            raise ValueError(f"input 'detection_size' must be a multiple of 32, got {detection_size}")
        with user_errors(f"face_models '{face_models}'"):
            analyzer = FaceAnalyzer(detector, recognizer, providers=providers, det_size=detection_size)
        return (MemoFaceModel(analyzer, face_models),)


IMPLEMENTATIONS = {  # node id -> (class doing the work, its method); nodes/comfy_nodes.py declares them
    "MemoModelLoader": (MemoModelLoader, "load"),
    "MemoAudioEncoderLoader": (MemoAudioEncoderLoader, "load"),
    "MemoEmotionModelLoader": (MemoEmotionModelLoader, "load"),
    "MemoFaceModelLoader": (MemoFaceModelLoader, "load"),
}
