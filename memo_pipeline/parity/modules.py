"""Runners for the single-module and network golden cases.

Each runner takes a case's JSON (`meta`) and its tensors (`t`), builds *our* module from the
recorded constructor or config, loads the recorded `model.*` weights strictly, switches the CPU
tuning on when asked (`cpu_tuning`) and replays the recorded calls in order, returning
`{output name: tensor}` for the harness to compare.
"""

from __future__ import annotations

import re

import torch

from ..loading import build_model
from ..models.audio_attention import AudioModule, JointAudioBlock
from ..models.clip_constants import ClipConstants
from ..models.diffusion_net import DiffusionNet
from ..models.emotion_classifier import AudioEmotionClassifier
from ..models.motion_memory import MotionMemory
from ..models.motion_module import MemoryLinearAttention, MotionModule, memory_update_from_flags
from ..models.projections import AudioProjection, ImageProjection
from ..models.reference_features import ReferenceFeatures
from ..models.reference_net import ReferenceNet
from ..models.spatial_attention import SpatialTransformer
from .fixtures import load_tuned


def _fixture_key(prefix: str, section: str, level: int, layer: int, feature: torch.Tensor) -> str:
    """Fixture name of one reference feature: `<prefix>.<section>.<level>.<layer>`, plus the
    transformer-block index `.0` for token features (the official nesting)."""
    return f"{prefix}.{section}.{level}.{layer}" + (".0" if feature.dim() == 3 else "")


def features_from_fixture(tensors: dict, prefix: str) -> ReferenceFeatures:
    """`<prefix>.down.<level>.<layer>[.0]` tensors -> `ReferenceFeatures` (mid is level 0 of `mid`)."""
    nested = {"down": {}, "mid": {}, "up": {}}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            section, level, layer, *block = name[len(prefix) + 1:].split(".")
            if block not in ([], ["0"]):
                raise ValueError(f"{name}: only the first transformer block of a layer is a reference feature")
            nested[section].setdefault(int(level), {})[int(layer)] = value
    ordered = {section: [[layers[j] for j in sorted(layers)] for _, layers in sorted(levels.items())]
               for section, levels in nested.items()}
    return ReferenceFeatures(ordered["down"], ordered["mid"][0], ordered["up"])


def features_to_fixture(features: ReferenceFeatures, prefix: str) -> dict:
    flat = {}
    for section, levels in (("down", features.down), ("mid", [features.mid]), ("up", features.up)):
        for i, layers in enumerate(levels):
            for j, feature in enumerate(layers):
                flat[_fixture_key(prefix, section, i, j, feature)] = feature
    return flat


def fold_frames(video: torch.Tensor) -> torch.Tensor:
    """`(b, c, f, h, w)` -> `((b f), c, h, w)`, the layout our modules take."""
    b, c, f, h, w = video.shape
    return video.transpose(1, 2).reshape(b * f, c, h, w)


def unfold_frames(frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    rows, c, h, w = frames.shape
    return frames.reshape(rows // num_frames, num_frames, c, h, w).transpose(1, 2)


def run_memory_linear_attention(meta, t, cpu_tuning: bool = False):
    c = meta["constructor"]
    model = load_tuned(cpu_tuning, MemoryLinearAttention(c["query_dim"], c["heads"], c["dim_head"], c.get("bias", False),
                                              c.get("temporal_position_encoding", False),
                                              c.get("temporal_position_encoding_max_len", 24)), t, "model.", meta["case"])
    memory, out = MotionMemory(), {}
    for call in meta["calls"]:
        update = memory_update_from_flags(call["is_new_audio"], call["update_past_memory"])
        hidden = model(t[call["hidden_states"]], t[call["motion_frames"]], call["video_length"], memory, update)
        out[call["outputs"][0]] = hidden
        for name in call["outputs"][1:]:
            kind = name.rsplit(".", 1)[1]
            out[name] = (memory.kv if kind == "KV" else memory.z)[model.slot_name]
    return out


def run_memory_attention(meta, t, cpu_tuning: bool = False):
    model = load_tuned(cpu_tuning, MotionModule(**meta["constructor"]), t, "model.", meta["case"])
    memory, out = MotionMemory(), {}
    for call in meta["calls"]:
        update = memory_update_from_flags(call["is_new_audio"], call["update_past_memory"])
        hidden, motion = t[call["hidden_states"]], t[call["motion_frames"]]
        frames = hidden.shape[2]
        out[call["outputs"][0]] = unfold_frames(model(fold_frames(hidden), fold_frames(motion), frames, memory, update), frames)
        for name in call["outputs"][1:]:
            slot, kind = name.split(".memory.", 1)[1].rsplit(".", 1)
            out[name] = (memory.kv if kind == "KV" else memory.z)[slot]
    return out


def run_spatial_ref_block(meta, t, cpu_tuning: bool = False):
    c = meta["constructor"]
    model = load_tuned(cpu_tuning, SpatialTransformer(c["num_attention_heads"], c["attention_head_dim"], c["in_channels"],
                                           c["cross_attention_dim"], c.get("norm_num_groups", 32), c.get("num_layers", 1),
                                           c.get("use_linear_projection", False), c.get("upcast_attention", False)),
                        t, "model.", meta["case"])
    out = {}
    for call in meta["calls"]:
        hidden, reference = (t[name] for name in call["args"])
        mask = t[call["uc_mask"]] if call.get("uc_mask") else None
        frames = hidden.shape[2]
        out[call["output"]] = unfold_frames(model(fold_frames(hidden), reference, t[call["encoder_hidden_states"]], frames, mask), frames)
    return out


def _emotion(t, name):
    return t[name].long()


def run_audio_block(meta, t, cpu_tuning: bool = False):
    c = meta["constructor"]
    model = load_tuned(cpu_tuning, JointAudioBlock(c["dim"], c["num_attention_heads"], c["attention_head_dim"], c["cross_attention_dim"],
                                        c.get("emo_drop_rate", 0.3), c.get("is_final_block", False),
                                        c.get("upcast_attention", False)), t, "model.", meta["case"])
    return _replay_audio_calls(model, meta, t)


def run_audio_module(meta, t, cpu_tuning: bool = False):
    c = meta["constructor"]
    model = load_tuned(cpu_tuning, AudioModule(c["num_attention_heads"], c["attention_head_dim"], c["in_channels"], c["cross_attention_dim"],
                                    c.get("norm_num_groups", 32), c.get("num_layers", 1), c.get("use_linear_projection", False),
                                    c.get("emo_drop_rate", 0.3), c.get("is_final_block", False), c.get("upcast_attention", False)),
                        t, "model.", meta["case"])
    return _replay_audio_calls(model, meta, t)


def _replay_audio_calls(model, meta, t):
    """Audio block and audio module calls: (video tokens, audio tokens, emotion) -> both outputs."""
    out = {}
    for call in meta["calls"]:
        hidden = t[call["hidden_states"]]
        if hidden.dim() == 5:  # a whole audio module: video in, video out
            frames = hidden.shape[2]
            hidden, audio = model(fold_frames(hidden), t[call["encoder_hidden_states"]], _emotion(t, call["emotion"]))
            hidden = unfold_frames(hidden, frames)
        else:
            hidden, audio = model(hidden, t[call["encoder_hidden_states"]], _emotion(t, call["emotion"]))
        out[call["outputs"][0]] = hidden
        if len(call["outputs"]) > 1:
            out[call["outputs"][1]] = audio
    return out


def _argument(t, expression: str) -> torch.Tensor:
    """Tensor arguments as the fixtures write them: a name, `zeros_like(name)` or `name[a:b]`."""
    match = re.fullmatch(r"zeros_like\((.+)\)", expression)
    if match:
        return torch.zeros_like(t[match.group(1)])
    match = re.fullmatch(r"(.+)\[(\d*):(\d*)\]", expression)
    if match:
        name, start, stop = match.groups()
        return t[name][int(start or 0): int(stop) if stop else None]
    return t[expression]


def run_projection(meta, t, cpu_tuning: bool = False):
    kind = meta["official_class"].split()[0].rsplit(".", 1)[-1]
    cls = {"AudioProjModel": AudioProjection, "ImageProjModel": ImageProjection,
           "AudioEmotionClassifierModel": AudioEmotionClassifier}[kind]
    model = load_tuned(cpu_tuning, cls(**meta["constructor"]), t, "model.", meta["case"])
    out = {}
    for call in meta["calls"]:
        argument = next(v for k, v in call.items() if k != "output")
        out[call["output"]] = model(_argument(t, argument))
        if cls is AudioEmotionClassifier:
            for name in t:
                if name.startswith("out.") and name.endswith("label"):
                    out[name] = model.predict(_argument(t, argument)).to(t[name].dtype)
    return out


def run_reference_net(meta, t, cpu_tuning: bool = False):
    model = load_tuned(cpu_tuning, build_model(ReferenceNet, meta["config"], "fixture config"), t, "model.", meta["case"])
    call = meta["calls"][0]
    sample = t[call["sample"].split(".repeat(")[0]]
    copies = int(re.search(r"\.repeat\((\d+)", call["sample"]).group(1)) if ".repeat(" in call["sample"] else 1
    features = model(sample.repeat(copies, 1, 1, 1), torch.tensor(0.0), t[call["encoder_hidden_states"]])
    return features_to_fixture(features, call["output"].rstrip(".*"))


def run_diffusion_net(meta, t, clip_constants: bool = True, cpu_tuning: bool = False):
    """Every call of the fixture in order; with `clip_constants`, the calls of one clip (same
    reference features, face tokens and emotion) share one `ClipConstants`."""
    model = load_tuned(cpu_tuning, build_model(DiffusionNet, meta["config"], "fixture config"), t, "model.", meta["case"])
    memory, out, prepared = MotionMemory(), {}, {}
    for call in meta["calls"]:
        features = features_from_fixture(t, call["ref_features"].rstrip(".*"))
        uc_mask = t[call["uc_mask"]] if call.get("uc_mask") else None
        face, emotion = t[call["encoder_hidden_states"]], _emotion(t, call["audio_emotion"])
        constants = None
        if clip_constants:
            key = (call["ref_features"], call["encoder_hidden_states"], call["audio_emotion"])
            constants = prepared.setdefault(key, ClipConstants())
        out[call["output"]] = model(
            t[call["sample"]], features, t[call["timestep"]], face, t[call["audio_embedding"]], emotion, memory,
            memory_update_from_flags(call["is_new_audio"], call["update_past_memory"]), uc_mask, constants=constants,
        )
    return out
