#!/usr/bin/env python3
"""Write the shipped workflows, each in ComfyUI's editor format and API format, from one description.

    python workflows/make_workflows.py            # (re)write workflows/*.json and workflows/api/*_api.json
    python workflows/make_workflows.py --check    # exit 1 if a file differs from what would be written

Each graph is described once (`GRAPHS`): nodes with their widget values and links. The editor
format (what File > Open / drag-and-drop loads) needs, per node, the widget values in widget order
and the link table; the API format (what POST /prompt takes) needs named inputs. Both are derived
here so they cannot disagree.

Node layout: `layout` stacks each graph's nodes in columns with sizes derived from their sockets and widgets, so
nothing overlaps (title bars and badges included) even when a node gains a socket, and `saved_view` picks the
editor view (`extra.ds`) that shows the whole graph, text drawn, in a 1280x720 window beside the editor's bars.

Files: the editor files sit directly in workflows/, which ComfyUI's template scan lists (it globs
custom_nodes/*/workflows/*.json, one level only; each template's thumbnail is the .jpg of the same
name next to it); the API files go to workflows/api/, which that scan does not list. Each editor
file gets a fixed UUID as its `id` (the frontend's zod schema requires a UUID there) and the
schema version the frontend itself writes (LiteGraph VERSION 0.4).

Widget order and types of our nodes come from their INPUT_TYPES; the core nodes used (ComfyUI
0.8.0) are described in `CORE_NODES`.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import os
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACK_ROOT = HERE.parent
API_SUBDIR = "api"  # API-format files: outside the folder level that the template scan lists
# Workflow ids are UUIDs derived from the file name, so regenerating a file never changes its id.
WORKFLOW_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "comfyui-memo/workflows")
TEMPLATE_CARD_KEY = "comfyui-memo"  # extra[...] of an editor file: the template card's title and description
EDITOR_SCHEMA_VERSION = 0.4  # what the ComfyUI frontend (1.35, LiteGraph VERSION) writes and validates

# Core nodes, from ComfyUI 0.8.0 (nodes.py: LoadImage, VAELoader; comfy_extras/nodes_audio.py: LoadAudio;
# comfy_extras/nodes_video.py: CreateVideo, SaveVideo):
# inputs in declaration order as (name, type, kind) with kind "widget" | "link" | "optional-link";
# extra_widgets: values the editor stores after the declared widgets (upload buttons, audio player).
CORE_NODES = {
    "LoadImage": {"inputs": [("image", "COMBO", "widget")], "extra_widgets": ["image"],
                  "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")]},
    "LoadAudio": {"inputs": [("audio", "COMBO", "widget")], "extra_widgets": [None, None],
                  "outputs": [("AUDIO", "AUDIO")]},
    "VAELoader": {"inputs": [("vae_name", "COMBO", "widget")], "outputs": [("VAE", "VAE")]},
    "CreateVideo": {"inputs": [("images", "IMAGE", "link"), ("fps", "FLOAT", "widget"),
                               ("audio", "AUDIO", "optional-link")],
                    "outputs": [("VIDEO", "VIDEO")]},
    "SaveVideo": {"inputs": [("video", "VIDEO", "link"), ("filename_prefix", "STRING", "widget"),
                             ("format", "COMBO", "widget"), ("codec", "COMBO", "widget")],
                  "outputs": []},
    "PreviewImage": {"inputs": [("images", "IMAGE", "link")], "outputs": []},  # nodes.py PreviewImage
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

MEMO = "memo/memo"
VAE_FILE = "vae-ft-mse-840000-ema-pruned.safetensors"
WAV2VEC = "audio_encoders/wav2vec2-base-960h"
EMOTION2VEC = "emotion2vec/emotion2vec_plus_large"
KIM_VOCAL = f"{MEMO}/misc/vocal_separator/Kim_Vocal_2.onnx"
# Download metadata the ComfyUI frontend reads from a node's properties.models (frontend 1.35.9, the one ComfyUI
# 0.8.0 pins: entries whose name equals one of the node's widget values are offered in its "Missing Models"
# dialog when models/<directory> lacks that file; only https://huggingface.co/ URLs and .safetensors names are
# downloadable there). Only single-file models qualify: the VAE. The folder models stay with `models fetch`.
VAE_DOWNLOAD = {"name": VAE_FILE, "directory": "vae",
                "url": f"https://huggingface.co/stabilityai/sd-vae-ft-mse-original/resolve/main/{VAE_FILE}"}


def L(node: int, slot: int = 0) -> tuple:  # noqa: N802 - reads like a link in the tables below
    """A link to output `slot` of node `node`."""
    return ("link", node, slot)


def N(node_type: str, inputs: dict, title: str | None = None, size=None, models=None) -> dict:  # noqa: N802
    """A node; `size` is its body (width, height) when it needs more than LiteGraph's minimum (previews, text)."""
    return {"type": node_type, "inputs": inputs, "title": title, "size": list(size) if size else None,
            "models": models}


def _common_loaders() -> dict[int, dict]:
    return {
        1: N("LoadImage", {"image": "portrait.png"}, "Portrait"),
        2: N("LoadAudio", {"audio": "speech.wav"}, "Speech"),
        3: N("VAELoader", {"vae_name": VAE_FILE}, models=[VAE_DOWNLOAD]),
        4: N("MemoModelLoader", {"checkpoint": MEMO, "dtype": "auto", "attention": "sdpa", "weight_dtype": "default"}),
        5: N("MemoAudioEncoderLoader", {"audio_encoder": WAV2VEC, "dtype": "fp32"}),
    }


def _sampler_inputs(reference, face, emotion) -> dict:
    return {"memo_model": L(4), "vae": L(3), "reference_image": reference, "memo_audio": L(8), "face": face,
            "seed": 42, "steps": 20, "cfg": 3.5, "past_frames": 16, "resolution": 512, "emotion": emotion,
            "max_clips": 0, "torch_compile": False, "cpu_tuning": True}


# Each graph returns its nodes and its layout: columns from left to right, each a list of node ids from top to
# bottom (see `layout`). Inputs on the left, the video on the right, and the bottom-right corner left empty: the
# editor's minimap and zoom buttons sit there.

def graph_detected_emotion():
    nodes = _common_loaders()
    nodes.update({
        6: N("MemoEmotionModelLoader", {"emotion2vec": EMOTION2VEC, "classifier_checkpoint": MEMO, "dtype": "fp32"}),
        7: N("MemoFaceModelLoader", {"face_models": MEMO, "detection_size": 640, "device": "auto"}),
        15: N("MemoVocalSeparation", {"audio": L(2), "model": KIM_VOCAL, "peak_normalize": True, "order": "official"}),
        8: N("MemoAudioEncode", {"audio_encoder": L(5), "audio": L(15), "fps": 30.0, "frames_per_clip": 16,
                                 "start_seconds": 0.0, "duration_seconds": 0.0}),
        9: N("MemoEmotionDetect", {"emotion_model": L(6), "audio": L(8, 1)}),
        10: N("MemoFaceEmbed", {"face_model": L(7), "image": L(1), "face_index": 0, "no_face": "error"}),
        11: N("MemoSampler", _sampler_inputs(L(1), L(10), L(9))),
        12: N("CreateVideo", {"images": L(11), "fps": L(11, 1), "audio": L(11, 3)}),
        13: N("SaveVideo", {"video": L(12), "filename_prefix": "MEMO/talking", "format": "auto", "codec": "auto"},
              size=VIDEO_PREVIEW),
    })
    return nodes, [[1, 2, 3], [4, 5, 6, 7], [10, 15, 8, 9], [11], [12, 13]]


def graph_schedule_paste_back():
    nodes = _common_loaders()
    nodes.update({
        7: N("MemoFaceModelLoader", {"face_models": MEMO, "detection_size": 640, "device": "auto"}),
        8: N("MemoAudioEncode", {"audio_encoder": L(5), "audio": L(2), "fps": 30.0, "frames_per_clip": 16,
                                 "start_seconds": 0.0, "duration_seconds": 0.0}),
        9: N("MemoEmotionSchedule", {"memo_audio": L(8), "schedule": "0:neutral, 2:happy, 6:surprised"},
             size=(300, 130)),
        10: N("MemoFaceCrop", {"face_model": L(7), "image": L(1), "resolution": 512, "scale": 2.5,
                               "shift_y": 0.25, "face_index": 0, "no_face": "error"}),
        11: N("MemoSampler", _sampler_inputs(L(10), L(10, 2), L(9))),
        14: N("MemoPasteBack", {"images": L(11), "crop": L(10, 1), "original_image": L(1), "feather": 0.1,
                                "color_match": False}),
        12: N("CreateVideo", {"images": L(14), "fps": L(11, 1), "audio": L(11, 3)}),
        13: N("SaveVideo", {"video": L(12), "filename_prefix": "MEMO/pasted", "format": "auto", "codec": "auto"},
              size=VIDEO_PREVIEW),
    })
    return nodes, [[1, 2, 3], [4, 5, 7], [10, 8, 9], [11, 14], [12, 13]]


def graph_long_audio_to_file():
    nodes = _common_loaders()
    nodes.update({
        6: N("MemoEmotionModelLoader", {"emotion2vec": EMOTION2VEC, "classifier_checkpoint": MEMO, "dtype": "fp32"}),
        7: N("MemoFaceModelLoader", {"face_models": MEMO, "detection_size": 640, "device": "auto"}),
        15: N("MemoVocalSeparation", {"audio": L(2), "model": KIM_VOCAL, "peak_normalize": True, "order": "official"}),
        8: N("MemoAudioEncode", {"audio_encoder": L(5), "audio": L(15), "fps": 30.0, "frames_per_clip": 16,
                                 "start_seconds": 0.0, "duration_seconds": 0.0}),
        9: N("MemoEmotionDetect", {"emotion_model": L(6), "audio": L(8, 1)}),
        10: N("MemoFaceCrop", {"face_model": L(7), "image": L(1), "resolution": 512, "scale": 2.5,
                               "shift_y": 0.25, "face_index": 0, "no_face": "error"}),
        11: N("MemoGenerateToFile", {**_sampler_inputs(L(10), L(10, 2), L(9)), "filename_prefix": "MEMO/long",
                                     "audio": L(8, 1), "crop": L(10, 1), "original_image": L(1), "crf": 18}),
        # Optional branch: the quality report of the finished file (mute or delete both nodes to skip it).
        16: N("MemoQualityReport", {"face_model": L(7), "reference_image": L(1), "audio": L(8, 1), "fps": L(8, 3),
                                    "frames_per_clip": 16, "identity_every": 1, "video_path": L(11),
                                    "emotion": L(9)}, "MEMO Quality Report (optional)"),
        17: N("PreviewImage", {"images": L(16)}, "Quality report plot", (320, 180)),
    })
    return nodes, [[1, 2, 3], [4, 5, 6, 7], [10, 15, 8, 9], [11], [16, 17]]


# name -> (title, one-line description, graph). Title and description are what the template browser shows on the
# workflow's card (web/template_cards.js reads them from the editor file's extra["comfyui-memo"]); the frontend
# turns every "-" and "_" of a description into a space, so they use neither, and shows two lines of about 40
# characters.
GRAPHS = {
    "memo_talking_video": ("MEMO talking video",
                           "Portrait + speech to a talking video, emotion detected from the voice",
                           graph_detected_emotion),
    "memo_schedule_paste_back": ("MEMO emotion schedule, pasted back",
                                 "Face crop, emotions set by time, the video pasted back into the photo",
                                 graph_schedule_paste_back),
    "memo_long_audio_to_file": ("MEMO long audio to mp4",
                                "Long audio streamed clip by clip into an mp4, then an optional quality report",
                                graph_long_audio_to_file),
}


# ------------------------------------------------------------------ layout
# LiteGraph as drawn by the ComfyUI frontend 1.35.9: a node's `pos` is the top-left corner of its body; the title
# bar (NODE_TITLE_HEIGHT) sits above it, and a pack's node source badge ("comfyui-memo") is drawn above the title.
TITLE_HEIGHT = 30
BADGE_HEIGHT = 24
SLOT_HEIGHT = 20       # LiteGraph NODE_SLOT_HEIGHT: one row per input or output socket
WIDGET_ROW = 24        # LiteGraph NODE_WIDGET_HEIGHT (20) + 4 px between widgets
BODY_MARGIN = 14       # what LGraphNode.computeSize adds below the widgets (6 when a node has no widgets)
NODE_MIN_WIDTH = 280   # wider than every node's computed minimum (its longest label row), room for model names
COLUMN_GAP = 40
ROW_GAP = 12           # between one node's bottom and the next node's badge
VIDEO_PREVIEW = (320, 220)  # Save Video: room for the preview of the finished video
# Body size of core nodes whose frontend widgets (image preview, upload button, audio player) are not sockets;
# Load Image grows to 314 px (frontend 1.35.9) once its preview has loaded.
CORE_MIN_BODY = {"LoadImage": (300, 330), "LoadAudio": (300, 140), "PreviewImage": (300, 180)}

# The saved view (`extra.ds`) must show every node, title and badge included, in the editor at 1280x720 (the
# size a browser test page has by default, and a small laptop screen), around what the frontend draws over the
# canvas there (measured in frontend 1.35.9 with document.elementFromPoint):
VIEW_WINDOW = (1280, 720)
VIEW_COVERED = [  # screen rectangles (left, top, right, bottom)
    (0, 0, 1280, 96),       # workflow tabs, the breadcrumb with the workflow name, the Run bar
    (0, 0, 64, 720),        # sidebar
    (1020, 460, 1280, 720), # minimap and zoom buttons
    (0, 640, 200, 720),     # the canvas' own info text (T:, N:, FPS) in the bottom-left corner
]
VIEW_MARGIN = 8
# Below this scale the frontend draws nodes without text (min font size for LOD 8 px / NODE_TEXT_SIZE 14).
TEXT_MIN_SCALE = 8 / 14


def min_body_size(node_type: str, spec: dict) -> tuple[int, int]:
    """The smallest body LiteGraph gives the node (LGraphNode.computeSize), rounded up: one row per socket on the
    side with more sockets, one widget row per widget (a linked widget keeps its row)."""
    if node_type in CORE_MIN_BODY:
        return CORE_MIN_BODY[node_type]
    sockets = max(sum(1 for _, _, kind in spec["inputs"] if kind != "widget"), len(spec["outputs"]), 1)
    widgets = sum(1 for _, _, kind in spec["inputs"] if kind == "widget") + len(spec["control"])
    height = sockets * SLOT_HEIGHT + widgets * WIDGET_ROW + (BODY_MARGIN if widgets else 6)
    return NODE_MIN_WIDTH, 10 * -(-height // 10)


def node_box(pos, size) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of what the editor draws for a node: badge, title bar and body."""
    return pos[0], pos[1] - TITLE_HEIGHT - BADGE_HEIGHT, pos[0] + size[0], pos[1] + size[1]


def layout(nodes: dict[int, dict], columns: list[list[int]], specs: dict[int, dict]) -> None:
    """Give every node its `pos` and `size`: columns side by side, nodes stacked in each; a column is as wide as
    its widest node. Sizes come from the node's sockets and widgets, so a node that gains a socket grows and
    everything below it moves down."""
    placed = [nid for column in columns for nid in column]
    if sorted(placed) != sorted(nodes):
        raise ValueError(f"layout places {sorted(placed)} but the graph has {sorted(nodes)}")
    x = 0
    for column in columns:
        sizes = {}
        for nid in column:
            minimum = min_body_size(nodes[nid]["type"], specs[nid])
            wanted = nodes[nid]["size"] or minimum
            sizes[nid] = [max(wanted[0], minimum[0]), max(wanted[1], minimum[1])]
        width = max(size[0] for size in sizes.values())
        y = TITLE_HEIGHT + BADGE_HEIGHT
        for nid in column:
            nodes[nid]["pos"] = [x, y]
            nodes[nid]["size"] = [width, sizes[nid][1]]
            y += sizes[nid][1] + ROW_GAP + TITLE_HEIGHT + BADGE_HEIGHT
        x += width + COLUMN_GAP


def screen_box(box, scale: float, offset) -> tuple[float, float, float, float]:
    """Where a graph-space box lands on the page for the view (scale, offset): screen = (graph + offset) * scale."""
    return tuple((value + offset[i % 2]) * scale for i, value in enumerate(box))


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def view_shows(boxes, scale: float, offset) -> bool:
    """True when every box lies in VIEW_WINDOW, VIEW_MARGIN clear of its edges and of VIEW_COVERED."""
    width, height = VIEW_WINDOW
    for box in boxes:
        left, top, right, bottom = screen_box(box, scale, offset)
        if left < VIEW_MARGIN or top < VIEW_MARGIN or right > width - VIEW_MARGIN or bottom > height - VIEW_MARGIN:
            return False
        padded = (left - VIEW_MARGIN, top - VIEW_MARGIN, right + VIEW_MARGIN, bottom + VIEW_MARGIN)
        if any(_overlaps(padded, covered) for covered in VIEW_COVERED):
            return False
    return True


def saved_view(boxes) -> dict:
    """The largest scale (at most 1, in steps of 0.01) at which the graph, put just right of the sidebar and
    below the top bar, is fully shown; an error if the text would not be drawn at that scale."""
    left = min(box[0] for box in boxes)
    top = min(box[1] for box in boxes)
    corner = (max(c[2] for c in VIEW_COVERED if c[1] == 0 and c[3] == VIEW_WINDOW[1]) + VIEW_MARGIN,
              max(c[3] for c in VIEW_COVERED if c[0] == 0 and c[2] == VIEW_WINDOW[0]) + VIEW_MARGIN)
    for step in range(100, 0, -1):
        scale = step / 100
        offset = [round(corner[0] / scale - left, 1), round(corner[1] / scale - top, 1)]
        if view_shows(boxes, scale, offset):
            if scale < TEXT_MIN_SCALE:
                raise ValueError(f"the graph fits the view only at scale {scale}, where node text is not drawn")
            return {"scale": scale, "offset": offset}
    raise ValueError("the graph does not fit the view at any scale")


# ------------------------------------------------------------------ node descriptions

def load_pack():
    """Import the pack the way ComfyUI does (a package named after its folder)."""
    name = "comfyui_memo_workflows"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def node_classes(pack) -> dict:
    """The pack's V3 node classes by id (their V1 view gives widget order and types). They need
    ComfyUI's comfy_api: run this script with COMFYUI_PATH set, or with ComfyUI's Python."""
    root = os.environ.get("COMFYUI_PATH", "").strip()
    if root and root not in sys.path:
        sys.path.append(root)
    comfy_nodes = importlib.import_module(pack.__name__ + ".nodes.comfy_nodes")
    return {cls.GET_SCHEMA().node_id: cls for cls in comfy_nodes.node_classes()}


def node_spec(node_type: str, pack) -> dict:
    """{"inputs": [(name, type, kind)], "outputs": [(name, type)], "extra_widgets": [...], "seed": {names}}."""
    if node_type in CORE_NODES:
        spec = dict(CORE_NODES[node_type])
        spec.setdefault("extra_widgets", [])
        spec["control"] = set()
        return spec
    cls = node_classes(pack)[node_type]
    declared = cls.INPUT_TYPES()
    inputs, control = [], set()
    for section in ("required", "optional"):
        for name, entry in declared.get(section, {}).items():
            kind_type = entry[0]
            options = entry[1] if len(entry) > 1 else {}
            type_name = "COMBO" if isinstance(kind_type, list) else kind_type
            if type_name in WIDGET_TYPES:
                inputs.append((name, type_name, "widget"))
                if options.get("control_after_generate"):
                    control.add(name)
            else:
                inputs.append((name, type_name, "link" if section == "required" else "optional-link"))
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return {"inputs": inputs, "outputs": list(zip(names, cls.RETURN_TYPES)), "extra_widgets": [], "control": control}


def _order(nodes: dict[int, dict]) -> list[int]:
    """Node ids in execution order (inputs first), ties by id."""
    done, order = set(), []
    while len(order) < len(nodes):
        ready = [nid for nid in sorted(nodes) if nid not in done and all(
            v[1] in done for v in nodes[nid]["inputs"].values() if isinstance(v, tuple))]
        if not ready:
            raise ValueError("workflow graph has a cycle")
        order.append(ready[0])
        done.add(ready[0])
    return order


def to_api(nodes: dict[int, dict], pack) -> dict:
    prompt = {}
    for nid in sorted(nodes):
        node = nodes[nid]
        spec = node_spec(node["type"], pack)
        known = {name for name, _, _ in spec["inputs"]}
        inputs = {}
        for name, value in node["inputs"].items():
            if name not in known:
                raise ValueError(f"node {nid} ({node['type']}) has no input '{name}'")
            inputs[name] = [str(value[1]), value[2]] if isinstance(value, tuple) else value
        entry = {"class_type": node["type"], "inputs": inputs}
        if node["title"]:
            entry["_meta"] = {"title": node["title"]}
        prompt[str(nid)] = entry
    return prompt


def to_editor(nodes: dict[int, dict], columns: list[list[int]], pack, name: str, title: str, description: str) -> dict:
    specs = {nid: node_spec(node["type"], pack) for nid, node in nodes.items()}
    layout(nodes, columns, specs)
    links, link_ids = [], {}
    for nid in sorted(nodes):
        spec = specs[nid]
        types = {n: t for n, t, _ in spec["inputs"]}
        for input_name, value in nodes[nid]["inputs"].items():
            if isinstance(value, tuple):
                source, slot = value[1], value[2]
                out_type = specs[source]["outputs"][slot][1]
                if types[input_name] not in (out_type, "*"):
                    raise ValueError(f"link {source}:{slot} ({out_type}) -> {nid}.{input_name} ({types[input_name]})")
                link_id = len(links) + 1
                links.append([link_id, source, slot, nid, 0, out_type])  # target slot filled below
                link_ids[(nid, input_name)] = link_id

    order = {nid: i for i, nid in enumerate(_order(nodes))}
    editor_nodes = []
    for nid in sorted(nodes):
        node, spec = nodes[nid], specs[nid]
        inputs, widgets = [], []
        for input_name, type_name, kind in spec["inputs"]:
            value = node["inputs"].get(input_name)
            link = link_ids.get((nid, input_name))
            if kind == "widget":
                if link is not None:
                    inputs.append({"name": input_name, "type": type_name, "widget": {"name": input_name}, "link": link})
                    widgets.append(_widget_default(node["type"], input_name, pack))
                else:
                    if value is None:
                        raise ValueError(f"node {nid} ({node['type']}): widget '{input_name}' has no value")
                    widgets.append(value)
                if input_name in spec["control"]:
                    widgets.append("fixed")
            else:
                entry = {"name": input_name, "type": type_name, "link": link}
                if kind == "optional-link":
                    entry["shape"] = 7
                inputs.append(entry)
        for slot, entry in enumerate(inputs):
            if entry["link"] is not None:
                links[entry["link"] - 1][4] = slot
        widgets += spec["extra_widgets"]
        outputs = []
        for slot, (out_name, out_type) in enumerate(spec["outputs"]):
            targets = [l[0] for l in links if l[1] == nid and l[2] == slot]
            outputs.append({"name": out_name, "type": out_type, "links": targets or None, "slot_index": slot})
        entry = {"id": nid, "type": node["type"], "pos": node["pos"], "size": node["size"], "flags": {},
                 "order": order[nid], "mode": 0, "inputs": inputs, "outputs": outputs,
                 "properties": {"Node name for S&R": node["type"]}, "widgets_values": widgets}
        if node.get("models"):
            entry["properties"]["models"] = node["models"]
        if node["title"]:
            entry["title"] = node["title"]
        editor_nodes.append(entry)
    return {
        "id": workflow_id(name), "revision": 0,
        "last_node_id": max(nodes), "last_link_id": len(links),
        "nodes": editor_nodes, "links": links, "groups": [], "config": {},
        "extra": {"ds": saved_view([node_box(n["pos"], n["size"]) for n in nodes.values()]),
                  TEMPLATE_CARD_KEY: {"title": title, "description": description}},
        "version": EDITOR_SCHEMA_VERSION,
    }


def workflow_id(name: str) -> str:
    """The editor file's `id`: a UUID (the frontend rejects anything else), fixed per workflow name."""
    return str(uuid.uuid5(WORKFLOW_ID_NAMESPACE, name))


def _widget_default(node_type: str, input_name: str, pack):
    """Value the editor keeps for a widget that was turned into a linked input."""
    if node_type == "CreateVideo" and input_name == "fps":
        return 30.0
    spec = node_classes(pack)[node_type].INPUT_TYPES()
    for section in ("required", "optional"):
        if input_name in spec.get(section, {}):
            return spec[section][input_name][1].get("default")
    raise KeyError(input_name)


def render_all() -> dict[str, str]:
    pack = load_pack()
    files = {}
    for name, (title, description, build) in GRAPHS.items():
        nodes, columns = build()
        files[f"{name}.json"] = json.dumps(to_editor(nodes, columns, pack, name, title, description), indent=2) + "\n"
        files[f"{API_SUBDIR}/{name}_api.json"] = json.dumps(to_api(nodes, pack), indent=2) + "\n"
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for filename, text in render_all().items():
        path = HERE / filename
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(filename)
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date: " + ", ".join(stale) + " (run python workflows/make_workflows.py)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
