"""Which model files each MEMO feature needs, where they are looked for, and whether they load.

    python -m memo_pipeline models check [--comfyui DIR | --models DIR]

One registry (:data:`ITEMS`) lists every file the pack reads, grouped by feature:

* ``core``    - generation: MEMO's reference/diffusion nets and projections, the SD VAE, wav2vec2;
* ``emotion`` - automatic emotions: emotion2vec_plus_large and MEMO's emotion classifier;
* ``face``    - identity embedding and face crop: SCRFD + ArcFace (glintr100) ONNX files;
* ``vocals``  - vocal separation: Kim_Vocal_2.onnx.

Each item knows its Hugging Face source (used by ``models fetch``, see ``model_fetch.py``), the
place under ComfyUI's ``models/`` folder where the fetcher and the workflows put it, and the other
layouts people already have (any MEMO checkpoint folder under ``memo/``, a single VAE file in
``vae/``, a single wav2vec2 file in ``audio_encoders/``, insightface's ``antelopev2`` folder, a
Hugging Face cache ``models--org--name/snapshots/<rev>/`` folder in the model folder or as the
models folder itself).

Checking never loads weights into memory: safetensors headers are parsed and checked by the
reader's own rules (byte ranges without overlap or gap, covering the file exactly, which catches
truncated downloads), then the networks are built from the found ``config.json`` on the meta
device and compared key by key and shape by shape. The files are found and read with the loaders'
own public functions (``loading.weight_files``, ``vae.vae_layout`` / ``single_file_state`` /
``build_vae``, ``wav2vec2_weights.read_folder_config`` / ``folder_weight_files``), so a check
accepts exactly what the loader loads (``tests/test_model_rules.py`` holds the two sides to it); ONNX files
are opened with onnxruntime by the same classes that run them; emotion2vec's ``config.yaml`` and
``model.pt`` go through the run-time safe loader (``torch.load(weights_only=True)``, memory-mapped).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

FEATURES = ("core", "emotion", "face", "vocals")
FEATURE_TITLES = {
    "core": "core generation",
    "emotion": "emotion detection",
    "face": "face embedding / crop",
    "vocals": "vocal separation",
}



@dataclass(frozen=True)
class Source:
    """A public Hugging Face model repository (licence as the repository states it)."""

    repo_id: str
    licence: str
    revision: str = "main"

    @property
    def page(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"

    @property
    def cache_name(self) -> str:
        return "models--" + self.repo_id.replace("/", "--")


MEMO_SOURCE = Source("memoavatar/memo", "Apache-2.0")
VAE_SOURCE = Source("stabilityai/sd-vae-ft-mse-original", "MIT")
WAV2VEC_SOURCE = Source("facebook/wav2vec2-base-960h", "Apache-2.0")
EMOTION2VEC_SOURCE = Source("emotion2vec/emotion2vec_plus_large", "other (model-license, see the FunASR repository)")

MEMO_DIR = "memo/memo"
VAE_FILE = "vae-ft-mse-840000-ema-pruned.safetensors"
WAV2VEC_DIR = "audio_encoders/wav2vec2-base-960h"
EMOTION2VEC_DIR = "emotion2vec/emotion2vec_plus_large"
DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNIZER_FILE = "glintr100.onnx"
KIM_VOCAL_FILE = "Kim_Vocal_2.onnx"
MEMO_MARKER = "diffusion_net/config.json"


@dataclass(frozen=True)
class Item:
    """One thing a loader reads: a model folder or a single file.

    ``dest`` is where it goes under ``models/`` (a folder or a file path); ``files`` maps each file
    to fetch from ``source`` (its path in the repository) to its path under ``models/``.
    """

    key: str
    feature: str
    kind: str
    title: str
    dest: str
    source: Source
    files: tuple[tuple[str, str], ...]
    component: str = ""  # MEMO sub-model name (loading.COMPONENTS) for kind "memo"


def _memo_item(key: str, feature: str, name: str, sub: str, title: str) -> Item:
    files = tuple((f"{sub}/{f}", f"{MEMO_DIR}/{sub}/{f}") for f in ("config.json", "diffusion_pytorch_model.safetensors"))
    return Item(key, feature, "memo", title, f"{MEMO_DIR}/{sub}", MEMO_SOURCE, files, component=name)


ITEMS: tuple[Item, ...] = (
    _memo_item("reference_net", "core", "reference_net", "reference_net", "MEMO reference net"),
    _memo_item("diffusion_net", "core", "diffusion_net", "diffusion_net", "MEMO diffusion net"),
    _memo_item("image_proj", "core", "image_proj", "image_proj", "MEMO image projection"),
    _memo_item("audio_proj", "core", "audio_proj", "audio_proj", "MEMO audio projection"),
    Item("vae", "core", "vae", "SD VAE (sd-vae-ft-mse)", f"vae/{VAE_FILE}", VAE_SOURCE,
         ((VAE_FILE, f"vae/{VAE_FILE}"),)),
    Item("wav2vec2", "core", "wav2vec2", "wav2vec2-base-960h speech encoder", WAV2VEC_DIR, WAV2VEC_SOURCE,
         tuple((f, f"{WAV2VEC_DIR}/{f}") for f in ("config.json", "model.safetensors", "preprocessor_config.json"))),
    _memo_item("emotion_classifier", "emotion", "emotion_classifier", "misc/audio_emotion_classifier",
               "MEMO emotion classifier"),
    Item("emotion2vec", "emotion", "emotion2vec", "emotion2vec_plus_large", EMOTION2VEC_DIR, EMOTION2VEC_SOURCE,
         tuple((f, f"{EMOTION2VEC_DIR}/{f}") for f in ("config.yaml", "model.pt"))),
    Item("face_detector", "face", "scrfd", "SCRFD face detector", f"{MEMO_DIR}/misc/face_analysis/models/{DETECTOR_FILE}",
         MEMO_SOURCE, ((f"misc/face_analysis/models/{DETECTOR_FILE}", f"{MEMO_DIR}/misc/face_analysis/models/{DETECTOR_FILE}"),)),
    Item("face_recognizer", "face", "arcface", "ArcFace identity (glintr100)",
         f"{MEMO_DIR}/misc/face_analysis/models/{RECOGNIZER_FILE}", MEMO_SOURCE,
         ((f"misc/face_analysis/models/{RECOGNIZER_FILE}", f"{MEMO_DIR}/misc/face_analysis/models/{RECOGNIZER_FILE}"),)),
    Item("vocal_separator", "vocals", "mdx", "Kim_Vocal_2 vocal separator", f"{MEMO_DIR}/misc/vocal_separator/{KIM_VOCAL_FILE}",
         MEMO_SOURCE, ((f"misc/vocal_separator/{KIM_VOCAL_FILE}", f"{MEMO_DIR}/misc/vocal_separator/{KIM_VOCAL_FILE}"),)),
)
ITEMS_BY_KEY = {item.key: item for item in ITEMS}


def items_for(features) -> list[Item]:
    features = set(features)
    unknown = features - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(sorted(unknown))}; choose from {', '.join(FEATURES)}")
    return [item for item in ITEMS if item.feature in features]


class FileProblem(ValueError):
    """A model file that exists but cannot be used; the message says why."""


# ------------------------------------------------------------------ safetensors headers

_DTYPE_BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U64": 64,
               "U32": 32, "U16": 16, "U8": 8, "BOOL": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F6_E2M3": 6,
               "F6_E3M2": 6, "F4": 4, "C64": 64}
_MAX_HEADER = 100_000_000  # the safetensors reader's own limit on the header length


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, tuple[int, ...]], dict]:
    """(tensor name -> shape, metadata) of a safetensors file whose header passed
    `read_safetensors_entries`. No tensor data is read."""
    entries, metadata, _ = read_safetensors_entries(path)
    return {name: tuple(entry["shape"]) for name, entry in entries.items()}, metadata


def read_safetensors_entries(path: str | os.PathLike) -> tuple[dict[str, dict], dict, int]:
    """(tensor name -> header entry (`dtype`, `shape`, `data_offsets`), metadata, offset of the
    tensor data in the file) of a safetensors file, after checking the header by the rules
    the safetensors reader applies when `generate` loads it: valid JSON object, string metadata,
    known dtypes, each tensor's byte span equal to dtype size x shape, the spans (in order) starting
    at 0, touching without gap or overlap, and ending exactly at the end of the file (so a truncated
    or padded download is caught). The reader itself then opens the header as a last word.
    No tensor data is read."""
    path = Path(path)
    if path.is_dir():
        raise FileProblem(f"{path} is a folder where a safetensors file should be; remove or rename it")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FileProblem(f"{path}: {size} bytes, too short for a safetensors file (truncated download?)")
        length = int.from_bytes(head, "little")
        if length > min(size - 8, _MAX_HEADER):
            raise FileProblem(f"{path}: not a safetensors file (header length {length} does not fit a {size}-byte file)")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FileProblem(f"{path}: not a safetensors file (its header is not valid JSON: {err.__class__.__name__})") from None
    except RecursionError:
        raise FileProblem(f"{path}: not a safetensors file (its header is nested too deeply)") from None
    if not isinstance(header, dict):
        raise FileProblem(f"{path}: not a safetensors file (its header is not a JSON object)")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FileProblem(f"{path}: its safetensors metadata must map names to strings")
    entries, spans = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (*shape, start, stop))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise FileProblem(f"{path}: malformed safetensors entry for tensor {name!r}")
        if dtype not in _DTYPE_BITS:
            raise FileProblem(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if stop < start or (stop - start) * 8 != math.prod(shape) * _DTYPE_BITS[dtype]:
            raise FileProblem(f"{path}: tensor {name!r} byte range {start}-{stop} does not match its shape {list(shape)}")
        entries[name] = entry
        spans.append((start, stop, name))
    end = 0
    for start, stop, name in sorted(spans):
        if start != end:
            what = "overlaps the tensor before it" if start < end else "leaves a gap before it"
            raise FileProblem(f"{path}: tensor {name!r} at bytes {start}-{stop} {what}; the file is damaged and "
                              "cannot be read")
        end = stop
    if 8 + length + end != size:
        raise FileProblem(f"{path}: the header describes {8 + length + end} bytes but the file has {size} "
                          f"({'truncated download?' if size < 8 + length + end else 'trailing data'})")
    _reader_accepts(path)
    return entries, metadata, 8 + length


def _reader_accepts(path: Path) -> None:
    """The safetensors reader's own verdict on the header (it maps the file, reads no tensor)."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        return
    try:
        with safe_open(os.fspath(path), framework="numpy"):
            pass
    except SafetensorError:
        raise FileProblem(f"{path}: the safetensors reader refuses its header (damaged file)") from None


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a safetensors file whose header passed `read_safetensors_header`."""
    return read_safetensors_header(path)[0]


def safetensors_metadata(path: str | os.PathLike) -> dict:
    return read_safetensors_header(path)[1]


def _meta_tensors(shapes: dict[str, tuple[int, ...]]):
    import torch

    return {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes in a weights file: a safetensors header, or a pickle opened only by the run-time safe
    loader (torch.load(weights_only=True) on a safe torch, memory-mapped)."""
    if path.name.endswith(".safetensors"):
        return safetensors_shapes(path)
    import torch

    from .loading import CheckpointError, require_safe_torch_load

    try:
        require_safe_torch_load(path)
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except CheckpointError as err:
        raise FileProblem(str(err)) from None
    except Exception:  # noqa: BLE001 - pickle, zip and torch errors
        raise FileProblem(f"{path}: not readable with torch.load(weights_only=True) (refused or damaged file)") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise FileProblem(f"{path} does not hold a flat dict of tensors")
    return {k: tuple(v.shape) for k, v in data.items()}


def compare_shapes(expected: dict, found: dict, source: str, what: str, ignore: set = frozenset(), limit: int = 4) -> None:
    """Raise FileProblem naming the first missing / unexpected / mis-shaped keys."""
    from .loading import shape_problems

    problems = shape_problems(expected, found, limit, ignore)
    if problems:
        raise FileProblem(f"{source} does not match {what}: " + "; ".join(problems))


def _shape_dict(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _file_size(paths) -> int:
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))


def _weights_shapes(weights: list[Path]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for path in weights:
        if not path.is_file():
            raise FileProblem(f"{path} is listed in the safetensors index but missing")
        shapes.update(safetensors_shapes(path))
    return shapes


# ------------------------------------------------------------------ per-kind checks (return (detail, files))
# Each check finds and reads its files with the loader's own functions (loading.weight_files,
# vae.vae_layout / single_file_state / build_vae, wav2vec2_weights.read_folder_config /
# folder_weight_files), on the meta device, so it accepts exactly what the loader loads.

def check_memo_component(folder: Path, component: str) -> tuple[str, list[Path]]:
    from .loading import COMPONENTS, CheckpointError, build_model, read_config, weight_files

    _, cls, _ = COMPONENTS[component]
    if not folder.is_dir():
        raise FileProblem(f"{folder} is not a folder (a MEMO model folder holds config.json and its weights)")
    try:
        config = read_config(folder)
        weights = weight_files(folder)
        model = build_model(cls, config, os.fspath(folder / "config.json"), device="meta")
    except CheckpointError as err:
        raise FileProblem(str(err)) from None
    shapes = _weights_shapes(weights)
    compare_shapes(_shape_dict(model), shapes, ", ".join(map(os.fspath, weights)), cls.__name__)
    return f"{cls.__name__}, {len(shapes)} tensors match config.json", [folder / "config.json", *weights]


def check_vae(path: Path) -> tuple[str, list[Path]]:
    from .vae import VAEFileError, build_vae, single_file_state, vae_folder_files, vae_layout

    try:
        if vae_layout(path) == "folder":
            config, weights = vae_folder_files(path)
            shapes = _weights_shapes(weights)
            build_vae(config, _meta_tensors(shapes), ", ".join(map(os.fspath, weights)))
            return f"diffusers AutoencoderKL, {len(shapes)} tensors match config.json", [path / "config.json", *weights]
        shapes, metadata = read_safetensors_header(path)
        config, tensors = single_file_state(_meta_tensors(shapes), metadata, os.fspath(path))
        build_vae(config, tensors, os.fspath(path))
    except VAEFileError as err:
        raise FileProblem(str(err)) from None
    return f"single-file SD VAE, {len(shapes)} tensors, widths {config['block_out_channels']}", [path]


def check_wav2vec2(path: Path) -> tuple[str, list[Path]]:
    import torch
    from transformers import Wav2Vec2Model

    from .audio.wav2vec2_weights import (_TRAINING_ONLY, WEIGHT_SUFFIXES, Wav2Vec2WeightsError, folder_weight_files,
                                         infer_config, normalize_state_dict, read_folder_config)

    try:
        if path.is_dir():
            config, _ = read_folder_config(path)
            weights = folder_weight_files(path)
            files = [path / "config.json", *weights]
            if (path / "preprocessor_config.json").is_file():
                files.append(path / "preprocessor_config.json")
        else:
            if not path.name.lower().endswith(WEIGHT_SUFFIXES):
                raise FileProblem(f"{path}: a single wav2vec2 file must be one of {', '.join(WEIGHT_SUFFIXES)}")
            config, weights, files = None, [path], [path]
        shapes = {}
        for weight in weights:
            if not weight.is_file():
                raise FileProblem(f"{weight} is listed in the safetensors index but missing")
            shapes.update(tensor_shapes(weight))
        source = os.fspath(path)
        state = normalize_state_dict(_meta_tensors(shapes), source)
        if config is None:
            config = infer_config(state, source)
    except Wav2Vec2WeightsError as err:
        raise FileProblem(str(err)) from None
    with torch.device("meta"):
        model = Wav2Vec2Model(config)
    compare_shapes(_shape_dict(model), {k: tuple(v.shape) for k, v in state.items()}, ", ".join(map(os.fspath, weights)),
                   "Wav2Vec2Model", ignore=set(_TRAINING_ONLY))
    return f"Wav2Vec2Model hidden {config.hidden_size} x {config.num_hidden_layers} layers", files


def emotion2vec_weights(folder: Path) -> Path | None:
    for name in ("model.pt", "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    return None


def check_emotion2vec(folder: Path) -> tuple[str, list[Path]]:
    import torch

    from .audio.emotion2vec import Emotion2Vec, Emotion2VecConfig, match_checkpoint_keys, read_checkpoint

    config_path = folder / "config.yaml"
    weights = emotion2vec_weights(folder)
    if weights is None:
        raise FileProblem(f"{folder} holds neither model.pt nor model.safetensors")
    if not config_path.is_file():
        raise FileProblem(f"{folder} has no config.yaml (emotion2vec's architecture is read from it)")
    try:
        config = Emotion2VecConfig.from_yaml(config_path)
    except Exception as err:  # noqa: BLE001 - YAML and value errors
        raise FileProblem(f"{config_path}: not a usable emotion2vec config ({err})") from None
    with torch.device("meta"):
        model = Emotion2Vec(config)
    if weights.suffix == ".safetensors":
        tensors = _meta_tensors(safetensors_shapes(weights))
    else:
        try:
            tensors = read_checkpoint(weights)  # the run-time loader: torch.load(weights_only=True), memory-mapped
        except ValueError as err:
            raise FileProblem(str(err)) from None
    try:
        match_checkpoint_keys(tensors, model.state_dict(), os.fspath(weights))
    except ValueError as err:
        raise FileProblem(str(err)) from None
    return f"emotion2vec {config.embed_dim}-d, {config.prenet_depth}+{config.depth} blocks", [config_path, weights]


def check_onnx(path: Path, kind: str) -> tuple[str, list[Path]]:
    providers = ["CPUExecutionProvider"]
    try:
        if kind == "scrfd":
            from .face.scrfd import ScrfdDetector

            model = ScrfdDetector(path, providers=providers)
            detail = f"SCRFD, input {model.session.get_inputs()[0].shape}, {len(model.output_names)} outputs"
        elif kind == "arcface":
            from .face.arcface import ArcFaceEmbedder

            model = ArcFaceEmbedder(path, providers=providers)
            detail = f"ArcFace, {model.input_size}x{model.input_size} face -> 512-d embedding"
        else:
            from .audio.separation import MDXVocalSeparator

            from .audio.separation import KIM_VOCAL_2_HASH, uvr_model_hash

            model = MDXVocalSeparator(path, providers=providers)
            known = "the Kim_Vocal_2 release" if uvr_model_hash(path) == KIM_VOCAL_2_HASH else "not the Kim_Vocal_2 release file"
            detail = f"MDX-Net, input [batch, 4, {model.params.dim_f}, {model.params.dim_t}], {known}"
    except ImportError as err:
        raise FileProblem(f"{path}: cannot be checked without onnxruntime ({err})") from None
    except (ValueError, RuntimeError) as err:  # FaceModelError / VocalSeparationUnavailable are ValueError/RuntimeError
        raise FileProblem(str(err)) from None
    return detail, [path]


def check_item_at(item: Item, path: Path) -> tuple[str, list[Path]]:
    """Check one found location of `item`; raises FileProblem when it cannot be used."""
    if item.kind == "memo":
        return check_memo_component(path, item.component)
    if item.kind == "vae":
        return check_vae(path)
    if item.kind == "wav2vec2":
        return check_wav2vec2(path)
    if item.kind == "emotion2vec":
        return check_emotion2vec(path)
    return check_onnx(path, item.kind)


# ------------------------------------------------------------------ where things are looked for

def hf_snapshots(folder: Path, source: Source) -> list[Path]:
    """Snapshot folders of `source` in a Hugging Face cache folder (refs/<revision> first)."""
    repo = folder / source.cache_name
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return []
    found = []
    ref = repo / "refs" / source.revision
    if ref.is_file():
        pinned = snaps / ref.read_text().strip()
        if pinned.is_dir():
            found.append(pinned)
    found += sorted((p for p in snaps.iterdir() if p.is_dir() and p not in found), key=lambda p: p.stat().st_mtime,
                    reverse=True)
    return found


def _dirs_with(root: Path, marker: str, depth: int = 2) -> list[Path]:
    """Folders up to `depth` levels below `root` that hold `marker` (hidden folders skipped). An
    unreadable folder raises OSError naming it, which `check_item` turns into one line."""
    out = []
    if depth <= 0 or not root.is_dir():
        return out
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        if (child / marker).is_file():
            out.append(child)
        else:
            out += _dirs_with(child, marker, depth - 1)
    return out


def memo_roots(models: Path) -> list[Path]:
    roots = [models / MEMO_DIR]
    roots += _dirs_with(models / "memo", MEMO_MARKER)
    roots += hf_snapshots(models / "memo", MEMO_SOURCE) + hf_snapshots(models, MEMO_SOURCE)
    if (models / MEMO_MARKER).is_file():
        roots.append(models)
    return list(dict.fromkeys(roots))


def _has_wav2vec2_anchor(path: Path) -> bool:
    from .audio.wav2vec2_weights import _ANCHOR

    try:
        return any(name.endswith(_ANCHOR) for name in safetensors_shapes(path))
    except (FileProblem, OSError):
        return "wav2vec2" in path.name.lower()  # a broken file named like one is reported, not skipped


def candidates(item: Item, models: Path) -> list[Path]:
    """Every place `item` is looked for under the models folder, the preferred one first."""
    models = Path(models)
    if item.kind == "memo":
        sub = item.dest[len(MEMO_DIR) + 1:]
        return [root / sub for root in memo_roots(models)]
    if item.kind in ("scrfd", "arcface"):
        name = DETECTOR_FILE if item.kind == "scrfd" else RECOGNIZER_FILE
        places = [root / "misc/face_analysis/models" / name for root in memo_roots(models)]
        face = models / "insightface"
        places += [face / "models/antelopev2" / name, face / "antelopev2" / name, face / "models" / name, face / name]
        places += [d / name for d in _dirs_with(face, name, depth=3)]
        return list(dict.fromkeys(places))
    if item.kind == "mdx":
        places = [root / "misc/vocal_separator" / KIM_VOCAL_FILE for root in memo_roots(models)]
        return places + [models / "vocal_separator" / KIM_VOCAL_FILE]
    if item.kind == "vae":
        folder = models / "vae"
        places = [folder / VAE_FILE, folder / "sd-vae-ft-mse"]
        places += [s / VAE_FILE for s in hf_snapshots(folder, VAE_SOURCE) + hf_snapshots(models, VAE_SOURCE)]
        diffusers_vae = Source("stabilityai/sd-vae-ft-mse", "MIT")
        places += hf_snapshots(folder, diffusers_vae) + hf_snapshots(models, diffusers_vae)
        places += _dirs_with(folder, "diffusion_pytorch_model.safetensors", depth=1)
        return list(dict.fromkeys(places))
    if item.kind == "wav2vec2":
        folder = models / "audio_encoders"
        places = [models / WAV2VEC_DIR]
        places += hf_snapshots(folder, WAV2VEC_SOURCE) + hf_snapshots(models, WAV2VEC_SOURCE)
        places += [d for d in _dirs_with(folder, "config.json", depth=2) if "wav2vec2" in d.name.lower()]
        if folder.is_dir():  # single files: only those holding a wav2vec2 (other audio encoders live here too)
            places += sorted(p for p in folder.glob("*.safetensors") if _has_wav2vec2_anchor(p))
        return list(dict.fromkeys(places))
    if item.kind == "emotion2vec":
        folder = models / "emotion2vec"
        places = [models / EMOTION2VEC_DIR]
        places += hf_snapshots(folder, EMOTION2VEC_SOURCE) + hf_snapshots(models, EMOTION2VEC_SOURCE)
        places += _dirs_with(folder, "config.yaml", depth=2)
        return list(dict.fromkeys(places))
    raise ValueError(f"unknown item kind {item.kind!r}")


# ------------------------------------------------------------------ results

@dataclass
class ItemStatus:
    item: Item
    status: str  # "found" | "missing" | "unusable"
    path: Path | None
    expected: Path
    searched: list[Path] = field(default_factory=list)
    size: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "found"


def describe_os_error(err: OSError) -> str:
    """One line for a file-system error: the path and what it means, without the errno dump."""
    import errno

    reasons = {errno.EROFS: "is on a read-only file system", errno.EACCES: "cannot be accessed (permission denied)",
               errno.EPERM: "cannot be accessed (operation not permitted)", errno.ENOSPC: "no space left on the disk",
               errno.ENOTDIR: "a file is in the way where a folder should be",
               errno.EISDIR: "is a folder where a file should be", errno.EXDEV: "is on another file system",
               errno.EEXIST: "already exists", errno.ENOENT: "does not exist", errno.EDQUOT: "disk quota exceeded",
               errno.ELOOP: "is a symbolic link loop", errno.ENAMETOOLONG: "name too long"}
    reason = reasons.get(err.errno) or (err.strerror or type(err).__name__).lower()
    where = err.filename if err.filename is not None else ""
    return f"{os.fspath(where)}: {reason}" if where != "" else reason


def check_item(item: Item, models: Path) -> ItemStatus:
    """Find `item` under `models` and check it. Any way a found file can fail becomes an
    "unusable" status with a reason in words, never an exception."""
    models = Path(models)
    expected = models / item.dest
    try:
        places = candidates(item, models)
    except OSError as err:
        return ItemStatus(item, "unusable", None, expected, [], None, f"cannot look for it: {describe_os_error(err)}")
    for place in places:
        try:
            if not place.exists():
                continue
            detail, files = check_item_at(item, place)
        except FileProblem as err:
            return ItemStatus(item, "unusable", place, expected, places, _safe_size(place), str(err))
        except OSError as err:
            return ItemStatus(item, "unusable", place, expected, places, None, describe_os_error(err))
        except RecursionError:
            return ItemStatus(item, "unusable", place, expected, places, _safe_size(place),
                              f"{place}: a file there is nested too deeply to be read")
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError, AttributeError) as err:
            # a library failed on a file our own rules let through: say what, not the library's words
            return ItemStatus(item, "unusable", place, expected, places, _safe_size(place),
                              f"{place}: not a usable {item.title} ({type(err).__name__} while reading it)")
        return ItemStatus(item, "found", place, expected, places, _file_size(files), detail)
    return ItemStatus(item, "missing", None, expected, places, None, "not found")


def _safe_size(place: Path) -> int | None:
    try:
        return _file_size(_files_in(place))
    except OSError:
        return None


def _files_in(path: Path) -> list[Path]:
    if path.is_dir():
        return [p for p in path.iterdir() if p.is_file()]
    return [path]


@dataclass
class Report:
    models: Path
    items: list[ItemStatus]

    def feature_ok(self, feature: str) -> bool:
        return all(s.ok for s in self.items if s.item.feature == feature)

    @property
    def core_ok(self) -> bool:
        return self.feature_ok("core")

    @property
    def broken(self) -> list[ItemStatus]:
        return [s for s in self.items if s.status == "unusable"]

    @property
    def exit_code(self) -> int:
        """0: core generation can run and no file that was found is broken; 1 otherwise."""
        return 0 if self.core_ok and not self.broken else 1

    def summary_lines(self) -> list[str]:
        lines = []
        for feature in FEATURES:
            states = [s for s in self.items if s.item.feature == feature]
            if not states:
                continue
            bad = [s for s in states if not s.ok]
            if not bad:
                lines.append(f"{feature:8s} OK       {FEATURE_TITLES[feature]}: all {len(states)} found and loadable")
            else:
                what = ", ".join(f"{s.item.title} {s.status}" for s in bad)
                verdict = "MISSING" if all(s.status == "missing" for s in bad) else "BROKEN"
                lines.append(f"{feature:8s} {verdict:8s} {FEATURE_TITLES[feature]}: {what}")
        return lines


def check_models(models: str | os.PathLike, features=FEATURES) -> Report:
    models = Path(models)
    return Report(models, [check_item(item, models) for item in items_for(features)])


def format_size(size: int | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1000
    return f"{size:.2f} GB"


def format_report(report: Report, verbose: bool = True) -> str:
    lines = [f"model folder: {report.models}"]
    if verbose:
        for s in report.items:
            head = f"[{s.status:8s}] {s.item.feature:7s} {s.item.title}"
            if s.ok:
                lines.append(f"{head}: {s.path} ({format_size(s.size)}; {s.detail})")
                continue
            lines.append(f"{head}: {s.detail}" if s.status == "unusable" else head)
            if s.path is not None:
                lines.append(f"    at {s.path} ({format_size(s.size)})")
            lines.append(f"    should be at {s.expected}  (from {s.item.source.page})")
            if s.status == "missing":
                shown = s.searched[:6]
                more = f" and {len(s.searched) - len(shown)} more" if len(s.searched) > len(shown) else ""
                lines.append("    looked in: " + ", ".join(map(os.fspath, shown)) + more)
    lines += report.summary_lines()
    fetch = f"python -m memo_pipeline models fetch --models {os.fspath(report.models)}"
    if not report.core_ok:
        lines.append(f"core generation cannot run; `{fetch}` downloads what is missing or broken")
    elif report.broken:
        lines.append(f"core generation can run, but some files are broken; `{fetch}` replaces them")
    return "\n".join(lines)


def missing_hint(files: str, searched, feature: str, models_dir: str | os.PathLike | None = None) -> str:
    """The sentence loaders append when they cannot find their files: which files, the folders
    searched and the two commands (with the real models folder when it is known)."""
    where = ", ".join(map(os.fspath, searched)) if searched else "(no model folder registered)"
    target = f"--models {os.fspath(models_dir)}" if models_dir else "--comfyui COMFYUI_DIR"
    return (f"needs {files}; searched {where}. Run `python -m memo_pipeline models check {target}` to see what is "
            f"missing and where it goes, or `python -m memo_pipeline models fetch {target} --only {feature}` "
            "to download it")
