"""The shipped workflows: up to date with their generator, structurally valid in both formats, and
executable node by node on tiny models (without ComfyUI). The checks against the node declarations
read the V3 schemas, so they need ComfyUI's comfy_api (COMFYUI_PATH) and skip without it.

Core ComfyUI nodes are checked against `CORE_NODES` below, copied by hand from ComfyUI 0.8.0
(nodes.py: LoadImage, VAELoader; comfy_extras/nodes_audio.py: LoadAudio; comfy_extras/nodes_video.py:
CreateVideo, SaveVideo). The live tests check the same workflows against a running server's
/object_info.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

import pack_support as S  # tests/ is on the import path (pyproject.toml), so this module loads once
from support import need

PACK = S.load_pack()
from comfyui_memo.memo_pipeline.video_io import VideoWriter, read_video_info  # noqa: E402
from comfyui_memo.nodes import IMPLEMENTATIONS, host, implementation  # noqa: E402

WORKFLOWS = S.REPO / "workflows"
FROZEN = S.REPO / "tests" / "fixtures" / "workflows_v1"  # the files as released with the V1 nodes
NAMES = ["memo_talking_video", "memo_schedule_paste_back", "memo_long_audio_to_file"]

# name -> {"required": {input: type}, "optional": {...}, "outputs": [types]}; COMBO values where fixed.
CORE_NODES = {
    "LoadImage": {"required": {"image": "COMBO"}, "optional": {}, "outputs": ["IMAGE", "MASK"]},
    "LoadAudio": {"required": {"audio": "COMBO"}, "optional": {}, "outputs": ["AUDIO"]},
    "VAELoader": {"required": {"vae_name": "COMBO"}, "optional": {}, "outputs": ["VAE"]},
    "CreateVideo": {"required": {"images": "IMAGE", "fps": "FLOAT"}, "optional": {"audio": "AUDIO"},
                    "outputs": ["VIDEO"]},
    "SaveVideo": {"required": {"video": "VIDEO", "filename_prefix": "STRING", "format": ["auto", "mp4"],
                               "codec": ["auto", "h264"]}, "optional": {}, "outputs": []},
    "PreviewImage": {"required": {"images": "IMAGE"}, "optional": {}, "outputs": []},
}
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _load_generator():
    spec = importlib.util.spec_from_file_location("memo_make_workflows", WORKFLOWS / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def node_schema(class_type: str) -> dict:
    """{"required": {name: type-or-choices}, "optional": {...}, "outputs": [types], "options": {name: dict}}."""
    if class_type in CORE_NODES:
        return {**CORE_NODES[class_type], "options": {}}
    cls = pack_nodes()[class_type]  # the V3 class, read through its V1 view as the frontend does
    declared = cls.INPUT_TYPES()
    schema = {"outputs": list(cls.RETURN_TYPES), "options": {}}
    for section in ("required", "optional"):
        schema[section] = {}
        for name, entry in declared.get(section, {}).items():
            options = entry[1] if len(entry) > 1 else {}
            schema[section][name] = options["options"] if entry[0] == "COMBO" else entry[0]
            schema["options"][name] = options
    return schema


def pack_nodes() -> dict:
    """The pack's V3 node classes by id (needs ComfyUI's comfy_api: skips without COMFYUI_PATH)."""
    return {cls.GET_SCHEMA().node_id: cls for cls in S.comfy_nodes().node_classes()}


def input_type(schema: dict, name: str):
    kind = {**schema["required"], **schema["optional"]}[name]
    return "COMBO" if isinstance(kind, list) else kind


@pytest.mark.parametrize("name", NAMES)
def test_workflow_files_exist_in_both_formats(name):
    assert (WORKFLOWS / f"{name}.json").is_file() and (WORKFLOWS / "api" / f"{name}_api.json").is_file()


def test_workflow_files_are_what_the_generator_writes():
    S.comfy_nodes()  # the generator reads the V3 declarations: skip without ComfyUI
    generator = _load_generator()
    for filename, text in generator.render_all().items():
        assert (WORKFLOWS / filename).read_text() == text, f"{filename} is stale: run python workflows/make_workflows.py"
    assert set(generator.CORE_NODES) == set(CORE_NODES)


@pytest.mark.parametrize("folder", [WORKFLOWS, FROZEN], ids=["shipped", "frozen_v1"])
@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_uses_existing_nodes_and_inputs(name, folder):
    prompt = S.json_file(folder / "api" / f"{name}_api.json")
    for node_id, node in prompt.items():
        class_type = node["class_type"]
        assert class_type in IMPLEMENTATIONS or class_type in CORE_NODES, f"unknown node {class_type}"
        schema = node_schema(class_type)
        declared = {**schema["required"], **schema["optional"]}
        assert set(node["inputs"]) <= set(declared), (node_id, set(node["inputs"]) - set(declared))
        missing = set(schema["required"]) - set(node["inputs"])
        assert not missing, f"node {node_id} ({class_type}) lacks required inputs {missing}"
        for input_name, value in node["inputs"].items():
            wanted = input_type(schema, input_name)
            if isinstance(value, list):  # a link [node id, output index]
                source, slot = value
                assert source in prompt, f"node {node_id}.{input_name} links to missing node {source}"
                outputs = node_schema(prompt[source]["class_type"])["outputs"]
                assert 0 <= slot < len(outputs), (node_id, input_name, value)
                assert outputs[slot] == wanted, f"{node_id}.{input_name}: {outputs[slot]} linked into {wanted}"
                continue
            assert wanted in WIDGETS, f"{node_id}.{input_name} ({wanted}) needs a link, got {value!r}"
            choices = declared[input_name]
            options = schema["options"].get(input_name, {})
            if wanted == "INT":
                assert isinstance(value, int) and options["min"] <= value <= options["max"], (node_id, input_name)
            elif wanted == "FLOAT":
                assert isinstance(value, (int, float)) and options.get("min", -math.inf) <= value <= \
                    options.get("max", math.inf), (node_id, input_name)
            elif wanted == "BOOLEAN":
                assert isinstance(value, bool)
            elif wanted == "STRING":
                assert isinstance(value, str) and value
            elif isinstance(choices, list) and class_type in CORE_NODES:
                assert value in choices, (node_id, input_name, value)
            elif isinstance(choices, list) and choices and not _is_model_list(class_type, input_name):
                assert value in choices, (node_id, input_name, value)


def _is_model_list(class_type: str, input_name: str) -> bool:
    """Combos filled from model folders (empty in CI, checked by running the workflow instead)."""
    return input_name in {"checkpoint", "audio_encoder", "emotion2vec", "classifier_checkpoint", "face_models", "model",
                          "state_file"}


# optional widgets added to the nodes after the V1 workflows were frozen (issue 22's cpu_tuning option,
# issue 20's weight_dtype)
ADDED_AFTER_FREEZE = {"cpu_tuning", "weight_dtype"}


@pytest.mark.parametrize("folder", [WORKFLOWS, FROZEN], ids=["shipped", "frozen_v1"])
@pytest.mark.parametrize("name", NAMES)
def test_editor_workflow_is_consistent_and_matches_the_api_file(name, folder):
    """Re-derive the API prompt from the editor file (widget order + link table) and compare; the files
    frozen from the V1 release must still match the (V3) declarations."""
    editor = S.json_file(folder / f"{name}.json")
    api = S.json_file(folder / "api" / f"{name}_api.json")
    assert editor["version"] == 0.4 and editor["last_node_id"] == max(n["id"] for n in editor["nodes"])
    links = {link[0]: link for link in editor["links"]}
    assert editor["last_link_id"] == max(links)
    nodes = {n["id"]: n for n in editor["nodes"]}
    derived = {}
    for node in editor["nodes"]:
        schema = node_schema(node["type"])
        inputs = {}
        for slot, entry in enumerate(node["inputs"]):
            if entry["link"] is None:
                continue
            link_id, source, source_slot, target, target_slot, kind = links[entry["link"]]
            assert (target, target_slot) == (node["id"], slot), f"link {link_id} points elsewhere"
            assert link_id in nodes[source]["outputs"][source_slot]["links"]
            assert kind == nodes[source]["outputs"][source_slot]["type"] == input_type(schema, entry["name"])
            inputs[entry["name"]] = [str(source), source_slot]
        values = list(node["widgets_values"])
        for section in ("required", "optional"):
            for input_name in schema[section]:
                if input_type(schema, input_name) not in WIDGETS:
                    continue
                if not values and folder == FROZEN and input_name in ADDED_AFTER_FREEZE:
                    continue  # saved before the input existed: the editor gives it its default
                value = values.pop(0)
                if schema["options"].get(input_name, {}).get("control_after_generate"):
                    assert values.pop(0) in ("fixed", "randomize", "increment", "decrement")
                inputs.setdefault(input_name, value)
        extras = {"LoadImage": ["image"], "LoadAudio": [None, None]}.get(node["type"], [])
        assert values == extras, f"node {node['id']} ({node['type']}) has unexpected widget values {values}"
        for slot, output in enumerate(node["outputs"]):
            assert output["type"] == schema["outputs"][slot]
            for link_id in output["links"] or []:
                assert links[link_id][1:3] == [node["id"], slot]
        entry = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        derived[str(node["id"])] = entry
    assert derived == api


def _editor_boxes(generator, editor: dict) -> dict[int, tuple]:
    return {n["id"]: generator.node_box(n["pos"], n["size"]) for n in editor["nodes"]}


def _overlapping_pairs(boxes: dict[int, tuple]) -> list[tuple[int, int]]:
    ids = sorted(boxes)
    return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]
            if boxes[a][0] < boxes[b][2] and boxes[b][0] < boxes[a][2]
            and boxes[a][1] < boxes[b][3] and boxes[b][1] < boxes[a][3]]


@pytest.mark.parametrize("name", NAMES)
def test_editor_workflow_layout_has_no_overlaps_and_its_saved_view_shows_every_node(name):
    """From the file alone: node boxes (badge + title bar above `pos`, then the body) do not intersect, every
    node is at least as large as LiteGraph makes it, and the saved view shows all of them at 1280x720 clear of
    the top bar, sidebar and minimap, at a scale where node text is drawn (the browser test checks the same on
    the page: tests/comfyui_live/test_frontend_live.py)."""
    generator = _load_generator()
    editor = S.json_file(WORKFLOWS / f"{name}.json")
    boxes = _editor_boxes(generator, editor)
    assert _overlapping_pairs(boxes) == []
    for node in editor["nodes"]:
        spec = generator.node_spec(node["type"], PACK)
        minimum = generator.min_body_size(node["type"], spec)
        assert node["size"][0] >= minimum[0] and node["size"][1] >= minimum[1], (node["id"], node["size"], minimum)
    view = editor["extra"]["ds"]
    assert view["scale"] >= generator.TEXT_MIN_SCALE
    assert generator.view_shows(boxes.values(), view["scale"], view["offset"])
    top_left = generator.screen_box((0, 0, 0, 0), view["scale"], view["offset"])[:2]
    assert top_left[0] > 64 and top_left[1] > 96  # the graph's origin is right of the sidebar, below the top bar


def test_view_check_refuses_a_view_that_hides_nodes():
    """The check above can fail: the saved view the files had before (scale 0.8, offset 40, 40) puts the top
    row under the top bar, and a scale of 0.3 makes the editor drop node text."""
    generator = _load_generator()
    boxes = _editor_boxes(generator, S.json_file(WORKFLOWS / "memo_talking_video.json")).values()
    assert not generator.view_shows(boxes, 0.8, [40, 40])
    assert 0.3 < generator.TEXT_MIN_SCALE
    assert _overlapping_pairs({1: (0, 0, 10, 10), 2: (5, 9, 20, 20)}) == [(1, 2)]


def test_layout_makes_room_when_a_node_gains_sockets(monkeypatch):
    """Nodes that gain an output socket (as MEMO Generate To File may gain a VIDEO output) grow, the nodes
    below it move down, and the saved view still shows every node."""
    generator = _load_generator()
    original = generator.node_spec

    def with_more_outputs(node_type, pack):
        spec = original(node_type, pack)
        if node_type.startswith("Memo"):
            spec = {**spec, "outputs": spec["outputs"] + [("VIDEO", "VIDEO")]}
        return spec

    base = {}
    for name, (title, description, build) in generator.GRAPHS.items():
        nodes, columns = build()
        base[name] = generator.to_editor(nodes, columns, PACK, name, title, description)
    monkeypatch.setattr(generator, "node_spec", with_more_outputs)
    for name, (title, description, build) in generator.GRAPHS.items():
        nodes, columns = build()
        grown = generator.to_editor(nodes, columns, PACK, name, title, description)
        sizes = {n["id"]: n["size"] for n in base[name]["nodes"]}
        assert any(n["size"][1] > sizes[n["id"]][1] for n in grown["nodes"]), name
        boxes = _editor_boxes(generator, grown)
        assert _overlapping_pairs(boxes) == []
        assert generator.view_shows(boxes.values(), grown["extra"]["ds"]["scale"], grown["extra"]["ds"]["offset"])


def _load_thumbnail_script():
    spec = importlib.util.spec_from_file_location("memo_make_thumbnails", S.REPO / "scripts" /
                                                  "make_template_thumbnails.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NAMES)
def test_template_card_has_a_title_and_a_one_line_description(name):
    """What web/template_cards.js puts on the template browser's card (the browser test checks it is shown)."""
    generator = _load_generator()
    title, description, _ = generator.GRAPHS[name]
    card = S.json_file(WORKFLOWS / f"{name}.json")["extra"][generator.TEMPLATE_CARD_KEY]
    assert card == {"title": title, "description": description}
    assert 10 <= len(description) <= 80 and "\n" not in description and title.startswith("MEMO ")
    assert not set("-_") & set(description + title), "the frontend shows '-' and '_' of a card as spaces"
    script = (S.REPO / "web" / "template_cards.js").read_text()
    assert f'const CARD_KEY = "{generator.TEMPLATE_CARD_KEY}";' in script
    assert PACK.WEB_DIRECTORY.strip("./") == "web"


def test_template_thumbnails_are_current_light_and_tell_the_workflows_apart():
    """Each thumbnail is what scripts/make_template_thumbnails.py draws; square (the card crops to a square);
    light with dark text (mean luminance, share of dark pixels); and at card size (128 px) any two differ by a
    mean of at least 30 of 255 per pixel."""
    from PIL import Image, ImageStat

    script = _load_thumbnail_script()
    assert script.stale() == []
    small = {}
    for name in NAMES:
        with Image.open(WORKFLOWS / f"{name}.jpg") as image:
            assert image.format == "JPEG" and image.width == image.height >= 256
            gray = image.convert("L")
            assert ImageStat.Stat(gray).mean[0] >= 170, f"{name}.jpg is dark"
            dark = sum(gray.histogram()[:90]) / (gray.width * gray.height)
            assert 0.01 <= dark <= 0.3, f"{name}.jpg: {dark:.3f} of it is dark (text and picture lines)"
            small[name] = image.convert("RGB").resize((128, 128), Image.BILINEAR)
    for i, a in enumerate(NAMES):
        for b in NAMES[i + 1:]:
            assert script.difference(small[a], small[b]) >= 30, (a, b)


def test_readme_names_every_model_the_workflows_use():
    readme = (WORKFLOWS / "README.md").read_text()
    generator = _load_generator()
    for text in (generator.VAE_FILE, "wav2vec2-base-960h", "emotion2vec_plus_large", "scrfd_10g_bnkps.onnx",
                 "glintr100.onnx", "Kim_Vocal_2.onnx", "models/memo/memo", "audio_emotion_classifier"):
        assert text in readme, text
    for name in NAMES:
        assert f"{name}.json" in readme and f"{name}_api.json" in readme


# ----------------------------------------------------------------------------- running the graphs

class CoreStandIns:
    """Python stand-ins for the core nodes, with ComfyUI's input/output conventions.

    LoadImage/LoadAudio read from `input_dir` as ComfyUI does (IMAGE [1, H, W, 3] float, AUDIO dict);
    VAELoader returns a ComfyUI-convention VAE on the tiny diffusers weights (ComfyUI's loader builds
    a full-size SD VAE and cannot load them); CreateVideo bundles its inputs; SaveVideo writes the mp4
    with the pack's VideoWriter into `output_dir` and returns its path.
    """

    def __init__(self, input_dir: Path, output_dir: Path, vae_folder: Path):
        self.input_dir, self.output_dir, self.vae_folder = input_dir, output_dir, vae_folder
        self.saved: list[Path] = []
        self.previewed: list[torch.Tensor] = []

    def LoadImage(self, image):  # noqa: N802 - node names
        return (S.read_png(self.input_dir / image), None)

    def LoadAudio(self, audio):  # noqa: N802
        return (S.read_audio(self.input_dir / audio),)

    def VAELoader(self, vae_name):  # noqa: N802
        return (S.comfy_vae(self.vae_folder),)

    def CreateVideo(self, images, fps, audio=None):  # noqa: N802
        return ({"images": images, "fps": fps, "audio": audio},)

    def SaveVideo(self, video, filename_prefix, format, codec):  # noqa: N802, A002
        assert format in ("auto", "mp4") and codec in ("auto", "h264")
        path = self.output_dir / (filename_prefix.replace("/", "_") + "_00001_.mp4")
        audio = video["audio"]
        with VideoWriter(path, video["fps"], audio=(audio["waveform"][0], audio["sample_rate"])) as writer:
            writer.write(video["images"])
        self.saved.append(path)
        return ()

    def PreviewImage(self, images):  # noqa: N802
        assert torch.is_tensor(images) and images.dim() == 4 and images.shape[-1] == 3
        self.previewed.append(images)
        return ()


def execute(prompt: dict, core: CoreStandIns) -> dict:
    """Run an API prompt node by node (inputs first), like ComfyUI's executor without its cache."""
    results, pending = {}, dict(prompt)
    while pending:
        ready = [nid for nid, node in pending.items()
                 if all(v[0] in results for v in node["inputs"].values() if isinstance(v, list))]
        assert ready, "the prompt has a cycle or a dangling link"
        for nid in sorted(ready, key=int):
            node = pending.pop(nid)
            kwargs = {k: results[v[0]][v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
            if node["class_type"] in CORE_NODES:
                out = getattr(core, node["class_type"])(**kwargs)
            else:
                out = implementation(node["class_type"])(**kwargs)
                if isinstance(out, dict):
                    assert set(out) == {"ui", "result"}
                    out = out["result"]
            results[nid] = out
    return results


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_bundle):
    need("onnx")
    root = tmp_path_factory.mktemp("workflow_run")
    roots = S.build_models_dir(root / "models", tiny_bundle)
    (root / "input").mkdir()
    S.write_png(root / "input" / "portrait.png", S.portrait())
    S.write_wav(root / "input" / "speech.wav", S.speech_like(1.2, 22050), 22050)
    S.write_wav(root / "input" / "speech_long.wav", S.noisy_speech(2.2, 22050), 22050)
    return root, roots, tiny_bundle


def _run(name, workspace, edit=None, tag=""):
    root, roots, bundle = workspace
    output = root / "output" / (name + tag)
    output.mkdir(parents=True)
    core = CoreStandIns(root / "input", output, bundle["vae"])
    prompt = S.small(S.json_file(WORKFLOWS / "api" / f"{name}_api.json"))
    if edit is not None:
        edit(prompt)
    with host.use_host(host.StandaloneHost(roots, output_dir=output)):
        results = execute(prompt, core)
    return results, core, output


EXPECTED_FRAMES = math.ceil(1.2 * 30)  # 1.2 s of speech at the workflows' 30 fps


def test_talking_video_workflow_runs_end_to_end(workspace):
    results, core, _ = _run("memo_talking_video", workspace)
    images, fps, state, audio = results["11"]
    assert images.shape == (EXPECTED_FRAMES, 64, 64, 3) and images.dtype == torch.float32 and fps == 30.0
    assert state.next_clip == 3  # 36 frames in clips of 16
    emotion, summary = results["9"]
    assert emotion.kind == "detected" and summary
    (video,) = core.saved
    info = read_video_info(video)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (EXPECTED_FRAMES, 64, 64, 30.0)
    assert info["audio_codec"] == "aac" and info["audio_duration"] == pytest.approx(1.2, abs=0.05)


def test_schedule_paste_back_workflow_runs_end_to_end(workspace):
    results, core, _ = _run("memo_schedule_paste_back", workspace)
    assert results["11"][0].shape == (EXPECTED_FRAMES, 64, 64, 3)
    pasted = results["14"][0]
    assert pasted.shape == (EXPECTED_FRAMES, 128, 128, 3)  # back in the 128x128 portrait
    labels = results["9"][0].frame_labels(results["8"][0])
    assert labels.tolist() == [4] * 48  # 0:neutral until 2 s: the whole (padded) 1.2 s clip
    assert "ignored" in results["9"][1]  # the 2 s and 6 s changes are past the end, and the summary says so
    info = read_video_info(core.saved[0])
    assert (info["frames"], info["width"], info["height"]) == (EXPECTED_FRAMES, 128, 128)


def test_long_audio_workflow_streams_to_a_file(workspace):
    results, core, output = _run("memo_long_audio_to_file", workspace)
    path, frames, state = results["11"]
    assert Path(path).parent == output / "MEMO" and Path(path).name == "long_00001_.mp4"
    assert frames == EXPECTED_FRAMES and state.next_clip == 3 and not core.saved
    info = read_video_info(path)
    assert (info["frames"], info["width"], info["height"]) == (EXPECTED_FRAMES, 128, 128)  # pasted back
    assert info["audio_duration"] == pytest.approx(1.2, abs=0.05)
    vocals = results["15"][0]
    assert vocals["sample_rate"] == 16000  # MEMO's order: the 16 kHz 16-bit track is what gets separated
    assert vocals["waveform"].shape == (1, 2, int(1.2 * 16000))
    plot, summary = results["16"]  # the optional quality report of the written file
    report = json.loads(summary)
    assert report["video"]["frames"] == EXPECTED_FRAMES and report["video"]["fps"] == 30.0
    assert report["identity"]["frames_scored"] == EXPECTED_FRAMES and -1 <= report["identity"]["mean"] <= 1
    assert "proxy" in report["sync_proxy"]["kind"] and report["emotion"]["segments"]
    assert len(report["identity"]["per_clip"]) == 3
    assert core.previewed == [plot] and plot.shape == (1, 640, 1200, 3)


def _cut_one_second(prompt):
    """Load Audio reads 2.2 s of speech and MEMO Audio Encode starts 1 s into it."""
    (loader,) = [n for n in prompt.values() if n["class_type"] == "LoadAudio"]
    (encode,) = [n for n in prompt.values() if n["class_type"] == "MemoAudioEncode"]
    loader["inputs"]["audio"] = "speech_long.wav"
    encode["inputs"]["start_seconds"] = 1.0


@pytest.mark.parametrize("name", NAMES)
def test_audio_cut_gives_a_soundtrack_aligned_with_the_driving_audio(name, workspace):
    """Every shipped workflow with a 1 s cut: the video is 1.2 s long and its soundtrack is the audio from
    1 s on (cross-correlation peak at 0 offset against that segment), the audio the face was driven by."""
    results, core, _ = _run(name, workspace, _cut_one_second, "_cut")
    path = core.saved[0] if core.saved else results["11"][0]
    info = read_video_info(path)
    assert info["frames"] == EXPECTED_FRAMES and info["audio_duration"] == pytest.approx(1.2, abs=0.05)
    source = S.read_audio(workspace[0] / "input" / "speech_long.wav")["waveform"][0]
    soundtrack = S.read_audio(path)
    lag, correlation = S.soundtrack_alignment(soundtrack, source[:, 22050:], 22050)
    assert abs(lag) < 0.005 and correlation > 0.95, (lag, correlation)
    lag, _ = S.soundtrack_alignment(soundtrack, source, 22050)
    assert lag == pytest.approx(-1.0, abs=0.005)  # it is the source from 1 s on, not from 0 s
