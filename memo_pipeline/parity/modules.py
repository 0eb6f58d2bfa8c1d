"""Runners for the single-module and network golden cases.

Each runner takes a case's JSON (`meta`) and its tensors (`t`), builds *our* module from the
recorded constructor or config, loads the recorded `model.*` weights strictly and replays the
recorded calls in order, returning `{output name: tensor}` for the harness to compare.
"""

from __future__ import annotations

import re

import torch

from ..loading import build_model
from ..models.audio_attention import AudioModule, JointAudioBlock
from ..models.diffusion_net import DiffusionNet
from ..models.emotion_classifier import AudioEmotionClassifier
from ..models.motion_memory import MotionMemory
from ..models.motion_module import MemoryLinearAttention, MotionModule, memory_update_from_flags
from ..models.projections import AudioProjection, ImageProjection
from ..models.reference_net import ReferenceNet
from ..models.spatial_attention import SpatialTransformer
from .fixtures import load_strict


def unflatten_features(tensors: dict, prefix: str) -> dict:
    """`<prefix>.down.<i>.<j>[.<k>]` tensors -> the nested `{"down": [[...]], "mid": ..., "up": ...}`."""
    nested = {"down": [], "mid": [], "up": []}
    entries = []
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            section, *index = name[len(prefix) + 1:].split(".")
            entries.append((section, [int(i) for i in index], value))
    for section, index, value in sorted(entries, key=lambda e: (e[0], e[1])):
        node = nested[section]
        for i in index[:-1]:
            while len(node) <= i:
                node.append([])
            node = node[i]
        node.insert(index[-1], value)
    return nested


def flatten_features(features: dict, prefix: str) -> dict:
    flat = {}

    def walk(node, path):
        if torch.is_tensor(node):
            flat[prefix + "." + ".".join(path)] = node
        else:
            for i, child in enumerate(node):
                walk(child, path + [str(i)])

    for section in ("down", "mid", "up"):
        walk(features[section], [section])
    return flat


def run_memory_linear_attention(meta, t):
    c = meta["constructor"]
    model = load_strict(MemoryLinearAttention(c["query_dim"], c["heads"], c["dim_head"], c.get("bias", False),
                                              c.get("temporal_position_encoding", False),
                                              c.get("temporal_position_encoding_max_len", 24)), t, "model.", meta["case"])
    memory, out = MotionMemory(), {}
    for call in meta["calls"]:
        update = memory_update_from_flags(call["is_new_audio"], call["update_past_memory"])
        hidden = model(t[call["hidden_states"]], t[call["motion_frames"]], call["video_length"], memory, update)
        out[call["outputs"][0]] = hidden
        for name in call["outputs"][1:]:
            kind = name.rsplit(".", 1)[1]
            out[name] = (memory.kv if kind == "KV" else memory.z)[model.memory_name]
    return out


def run_memory_attention(meta, t):
    model = load_strict(MotionModule(**meta["constructor"]), t, "model.", meta["case"])
    memory, out = MotionMemory(), {}
    for call in meta["calls"]:
        update = memory_update_from_flags(call["is_new_audio"], call["update_past_memory"])
        out[call["outputs"][0]] = model(t[call["hidden_states"]], t[call["motion_frames"]], memory, update)
        for name in call["outputs"][1:]:
            slot, kind = name.split(".memory.", 1)[1].rsplit(".", 1)
            out[name] = (memory.kv if kind == "KV" else memory.z)[slot]
    return out


def run_spatial_ref_block(meta, t):
    c = meta["constructor"]
    model = load_strict(SpatialTransformer(c["num_attention_heads"], c["attention_head_dim"], c["in_channels"],
                                           c["cross_attention_dim"], c.get("norm_num_groups", 32), c.get("num_layers", 1),
                                           c.get("use_linear_projection", False), c.get("upcast_attention", False)),
                        t, "model.", meta["case"])
    out = {}
    for call in meta["calls"]:
        hidden, reference = (t[name] for name in call["args"])
        mask = t[call["uc_mask"]] if call.get("uc_mask") else None
        out[call["output"]] = model(hidden, reference, t[call["encoder_hidden_states"]], mask)
    return out


def _emotion(t, name):
    return t[name].long()


def run_audio_block(meta, t):
    c = meta["constructor"]
    model = load_strict(JointAudioBlock(c["dim"], c["num_attention_heads"], c["attention_head_dim"], c["cross_attention_dim"],
                                        c.get("emo_drop_rate", 0.3), c.get("is_final_block", False),
                                        c.get("upcast_attention", False)), t, "model.", meta["case"])
    return _replay_audio_calls(model, meta, t)


def run_audio_module(meta, t):
    c = meta["constructor"]
    model = load_strict(AudioModule(c["num_attention_heads"], c["attention_head_dim"], c["in_channels"], c["cross_attention_dim"],
                                    c.get("norm_num_groups", 32), c.get("num_layers", 1), c.get("use_linear_projection", False),
                                    c.get("emo_drop_rate", 0.3), c.get("is_final_block", False), c.get("upcast_attention", False)),
                        t, "model.", meta["case"])
    return _replay_audio_calls(model, meta, t)


def _replay_audio_calls(model, meta, t):
    """Audio block and audio module calls: (video tokens, audio tokens, emotion) -> both outputs."""
    out = {}
    for call in meta["calls"]:
        hidden, audio = model(t[call["hidden_states"]], t[call["encoder_hidden_states"]], _emotion(t, call["emotion"]))
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


def run_projection(meta, t):
    kind = meta["official_class"].split()[0].rsplit(".", 1)[-1]
    cls = {"AudioProjModel": AudioProjection, "ImageProjModel": ImageProjection,
           "AudioEmotionClassifierModel": AudioEmotionClassifier}[kind]
    model = load_strict(cls(**meta["constructor"]), t, "model.", meta["case"])
    out = {}
    for call in meta["calls"]:
        argument = next(v for k, v in call.items() if k != "output")
        out[call["output"]] = model(_argument(t, argument))
        if cls is AudioEmotionClassifier:
            for name in t:
                if name.startswith("out.") and name.endswith("label"):
                    out[name] = model.predict(_argument(t, argument)).to(t[name].dtype)
    return out


def run_reference_net(meta, t):
    model = load_strict(build_model(ReferenceNet, meta["config"], "fixture config"), t, "model.", meta["case"])
    call = meta["calls"][0]
    sample = t[call["sample"].split(".repeat(")[0]]
    copies = int(re.search(r"\.repeat\((\d+)", call["sample"]).group(1)) if ".repeat(" in call["sample"] else 1
    features = model(sample.repeat(copies, 1, 1, 1), torch.tensor(0.0), t[call["encoder_hidden_states"]])
    return flatten_features(features, call["output"].rstrip(".*"))


def run_diffusion_net(meta, t):
    model = load_strict(build_model(DiffusionNet, meta["config"], "fixture config"), t, "model.", meta["case"])
    memory, out = MotionMemory(), {}
    for call in meta["calls"]:
        features = unflatten_features(t, call["ref_features"].rstrip(".*"))
        uc_mask = t[call["uc_mask"]] if call.get("uc_mask") else None
        out[call["output"]] = model(
            t[call["sample"]], features, t[call["timestep"]], t[call["encoder_hidden_states"]],
            t[call["audio_embedding"]], _emotion(t, call["audio_emotion"]), memory,
            memory_update_from_flags(call["is_new_audio"], call["update_past_memory"]), uc_mask,
        )
    return out

