"""The pack in ComfyUI's own web editor, in a real browser: templates, loading the shipped editor
workflows as a user's drag-and-drop does, queueing them from the page, and restoring a graph from
the mp4 MEMO Generate To File wrote.

Runs against the live server of the session (memo_comfy_live.py) with a headless system Chromium
driven by Playwright (memo_browser.py); skips with the reason when ComfyUI, Chromium or the
playwright package is missing. Sampling is CI-sized on the page itself (2 steps at 64x64, as the
HTTP workflow tests do) by editing the widgets after the unmodified workflow has loaded.
"""
import glob
import importlib.util
import json
import math
import os
import subprocess
from pathlib import Path

import pytest

import memo_comfy_live as live
from support import need

live.skip_module_unless_comfyui()

pytestmark = pytest.mark.comfyui

HERE = Path(__file__).resolve().parent
WORKFLOWS = live.REPO_ROOT / "workflows"
FROZEN = live.REPO_ROOT / "tests" / "fixtures" / "workflows_v1"  # as released with the V1 nodes, never regenerated
NAMES = ["memo_talking_video", "memo_schedule_paste_back", "memo_long_audio_to_file"]
# node that writes the mp4, and its frame size at 64x64 sampling
VIDEO_NODE = {"memo_talking_video": (13, 64), "memo_schedule_paste_back": (13, 128),
              "memo_long_audio_to_file": (11, 128)}
CI_WIDGETS = {"MemoSampler": {"steps": 2, "resolution": 64}, "MemoGenerateToFile": {"steps": 2, "resolution": 64},
              "MemoFaceCrop": {"resolution": 64}}


def _module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


browser_mod = _module("memo_browser", HERE / "memo_browser.py")
generator = _module("memo_make_workflows_for_browser", WORKFLOWS / "make_workflows.py")  # the layout rules
nodes_live = _module("memo_live_nodes_for_browser", HERE / "test_memo_nodes_live.py")
S = nodes_live.S


def editor_file(name, folder=WORKFLOWS) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


# ----------------------------------------------------------------------------- without a browser

def test_installed_frontend_still_has_the_schema_rules_we_check(comfy):
    """tests/frontend_workflow_schema.py mirrors the frontend ComfyUI pins; fail loudly if that changes."""
    from frontend_workflow_schema import FRONTEND_VERSION

    code = "import comfyui_frontend_package, os; print(os.path.dirname(comfyui_frontend_package.__file__))"
    folder = subprocess.run([str(comfy.server.python), "-c", code], check=True, capture_output=True,
                            text=True).stdout.strip()
    version = subprocess.run([str(comfy.server.python), "-m", "pip", "show", "comfyui-frontend-package"],
                             capture_output=True, text=True).stdout
    assert f"Version: {FRONTEND_VERSION}" in version, version
    bundle = "".join(Path(p).read_text(errors="replace") for p in glob.glob(os.path.join(folder, "static", "assets",
                                                                                          "*.js")))
    for rule in ("zComfyWorkflow=zBaseExportableGraph.extend({id:z.string().uuid().optional()",
                 "links:z.array(zComfyLink)", "version:z.number()", "VERSION=.4",
                 r"/^[0-9a-fA-F]{8}\b-[0-9a-fA-F]{4}\b-[0-9a-fA-F]{4}\b-[0-9a-fA-F]{4}\b-[0-9a-fA-F]{12}$/i",
                 'mediaType:"image",mediaSubtype:"jpg",description:I',
                 # what web/template_cards.js wraps: the two template lists of the api object
                 "async getWorkflowTemplates(){", "async getCoreWorkflowTemplates("):
        assert rule in bundle, rule


def test_template_routes_list_exactly_the_editor_workflows(comfy):
    if not comfy.server.pack_linked:
        pytest.skip("COMFYUI_LINK_PACK=0: the server runs without this pack")
    listed = comfy.get_json("/workflow_templates")
    assert sorted(listed.get(live.PACK_DIR_NAME, [])) == sorted(NAMES), listed
    for name in NAMES:
        status, body = comfy._request("GET", f"/api/workflow_templates/{live.PACK_DIR_NAME}/{name}.jpg")
        assert status == 200 and body == (WORKFLOWS / f"{name}.jpg").read_bytes()
        status, body = comfy._request("GET", f"/api/workflow_templates/{live.PACK_DIR_NAME}/{name}.json")
        assert status == 200 and json.loads(body) == editor_file(name)


# ----------------------------------------------------------------------------- in the browser

@pytest.fixture(scope="module")
def editor(comfy, tiny_bundle):
    """One browser page on the live editor, opened after the workflows' models and inputs are in place
    (the editor reads the model lists when it starts)."""
    reason = browser_mod.why_no_browser()
    if reason and browser_mod.browser_required():
        pytest.fail(f"MEMO_REQUIRE_BROWSER is set but {reason}")
    if reason:
        pytest.skip(f"browser tests skipped: {reason}")
    need("onnx")
    if not comfy.server.pack_linked:
        pytest.skip("COMFYUI_LINK_PACK=0: the server runs without this pack")
    dirs = comfy.server.dirs()
    S.build_models_dir(dirs["models"], tiny_bundle)
    vae_path = dirs["models"] / "vae" / S.VAE_FILE
    if not vae_path.exists():
        nodes_live.write_sd_vae(vae_path)
    S.write_png(dirs["input"] / "portrait.png", S.portrait())
    S.write_wav(dirs["input"] / "speech.wav", S.speech_like(nodes_live.SECONDS, 22050), 22050)
    with browser_mod.Browser() as browser:
        page = browser.open_comfy(comfy.url)
        page.browser = browser
        yield page


# The saved view is made for 1280x720 (make_workflows.VIEW_WINDOW); a larger window must show it too.
WINDOW_SIZES = [tuple(generator.VIEW_WINDOW), (1400, 900)]


@pytest.fixture(scope="module")
def fresh_pages(editor):
    """page_at((width, height)): a page on the editor at that window size on which nothing has been run (after
    a run the editor's job panel may stay open over the top right corner of the canvas)."""
    pages = {}

    def page_at(size):
        if size not in pages:
            pages[size] = editor.browser.open_comfy(editor.url, viewport=size)
        return pages[size]

    yield page_at
    for page in pages.values():
        page.page.close()


def _boxes_overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def assert_opens_fully_visible(page, name):
    """Every node of the loaded workflow, badge and title bar included, is on the page, not under the top bar,
    the sidebar, the minimap or anything else, drawn with its text, at the size the file gives it, and no two
    nodes overlap."""
    shipped = {n["id"]: n for n in editor_file(name)["nodes"]}
    layout = page.node_layout(badge_height=generator.BADGE_HEIGHT)
    assert not layout["low_quality"], f"{name}: at scale {layout['scale']} the editor draws nodes without text"
    width, height = layout["window"]
    assert sorted(n["id"] for n in layout["nodes"]) == sorted(shipped)
    for node in layout["nodes"]:
        left, top, right, bottom = node["page_box"]
        assert left >= 0 and top >= 0 and right <= width and bottom <= height, (name, node["title"], node["page_box"])
        assert node["hidden"] == [], f"{name}: {node['title']} is partly covered at {node['hidden'][:4]}"
        assert node["size"] == shipped[node["id"]]["size"], (name, node["title"], node["size"])
        assert node["min_size"][0] <= node["size"][0] and node["min_size"][1] <= node["size"][1], \
            f"{name}: {node['title']} is smaller ({node['size']}) than the editor needs ({node['min_size']})"
    for i, a in enumerate(layout["nodes"]):
        for b in layout["nodes"][i + 1:]:
            assert not _boxes_overlap(a["graph_box"], b["graph_box"]), f"{name}: {a['title']} overlaps {b['title']}"


@pytest.mark.parametrize("size", WINDOW_SIZES, ids=lambda size: "x".join(map(str, size)))
@pytest.mark.parametrize("name", NAMES)
def test_editor_workflow_opens_fully_visible(fresh_pages, name, size):
    page = fresh_pages(size)
    page.close_dialogs()  # the template browser opens by itself on a first visit
    alerts_before = len(page.alerts())
    page.drop_file(f"{name}.json", (WORKFLOWS / f"{name}.json").read_bytes(), "application/json")
    assert page.alerts()[alerts_before:] == [] and page.open_dialogs() == []
    assert_opens_fully_visible(page, name)


def test_template_browser_shows_the_editor_workflows_with_thumbnails(editor):
    if not editor.open_dialogs():  # it opens by itself on a first visit; otherwise open it as the menu does
        editor.run_command("Comfy.BrowseTemplates")
        editor.wait_idle(1.0)
    editor.page.locator(".p-dialog").get_by_text(live.PACK_DIR_NAME, exact=True).first.click()
    editor.wait_idle(1.5)
    cards = editor.page.evaluate("""() => Array.from(document.querySelectorAll('[data-testid^="template-workflow-"]'))
        .map((c) => ({name: c.dataset.testid.slice('template-workflow-'.length),
                      title: c.querySelector('h3') && c.querySelector('h3').innerText,
                      description: c.querySelector('p') && c.querySelector('p').innerText,
                      images: Array.from(c.querySelectorAll('img')).map((i) => [i.src, i.naturalWidth])}))""")
    assert sorted(c["name"] for c in cards) == sorted(NAMES)
    for card in cards:  # web/template_cards.js gives each card its title and description, not the file name
        title, description, _ = generator.GRAPHS[card["name"]]
        assert (card["title"], card["description"]) == (title, description), card
    from PIL import Image

    for card in cards:  # the card shows our thumbnail (fetched as <name>.jpg), not the frontend's placeholder
        wanted = f"/api/workflow_templates/{live.PACK_DIR_NAME}/{card['name']}.jpg"
        assert (comfy_url(editor) + wanted, 200) in editor.responses, card
        with Image.open(WORKFLOWS / f"{card['name']}.jpg") as thumb:
            assert thumb.width in [width for _, width in card["images"]], card
    # opening a template loads the graph without complaint
    editor.page.locator('[data-testid="template-workflow-memo_talking_video"]').first.click()
    editor.wait_idle(2.0)
    assert editor.open_dialogs() == [] and editor.alerts() == []
    assert_opens_fully_visible(editor, "memo_talking_video")
    graph, shipped = editor.graph(), editor_file("memo_talking_video")
    assert (len(graph["nodes"]), len(graph["links"])) == (len(shipped["nodes"]), len(shipped["links"]))


def comfy_url(editor):
    return editor.url


def _named_links(graph) -> list[tuple]:
    """(origin node, origin slot, target node, target input name, type) of every link. Input names,
    not slot numbers: the editor orders a node's sockets its own way (linked widgets last)."""
    inputs = {n["id"]: [i["name"] for i in n.get("inputs") or []] for n in graph["nodes"]}
    return sorted((o, o_slot, t, inputs[t][t_slot], kind) for _, o, o_slot, t, t_slot, kind in graph["links"])


def _same_links(graph, shipped):
    return _named_links(graph) == _named_links(shipped)


@pytest.mark.parametrize("folder", [WORKFLOWS, FROZEN], ids=["shipped", "frozen_v1"])
@pytest.mark.parametrize("name", NAMES)
def test_editor_workflow_loads_by_drag_and_drop_and_runs_from_the_page(editor, comfy, name, folder):
    """The shipped files, and the files saved with the V1 release (frozen), load without an alert and run."""
    from comfyui_memo.memo_pipeline.video_io import read_video_info, read_video_metadata

    editor.close_dialogs()
    shipped = editor_file(name, folder)
    alerts_before = len(editor.alerts())
    editor.drop_file(f"{name}.json", (folder / f"{name}.json").read_bytes(), "application/json")
    assert editor.alerts()[alerts_before:] == [], "the editor raised an alert while loading the workflow"
    assert editor.open_dialogs() == [], "a dialog (e.g. missing nodes) opened while loading the workflow"
    graph = editor.graph()
    nodes, links = len(shipped["nodes"]), len(shipped["links"])
    video_node, size = VIDEO_NODE[name]
    assert nodes >= 12 and links >= 16
    assert (len(graph["nodes"]), len(graph["links"])) == (nodes, links)
    assert _same_links(graph, shipped) and graph["id"] == shipped["id"]
    assert {n["type"] for n in graph["nodes"]} == {n["type"] for n in shipped["nodes"]}

    for node in shipped["nodes"]:
        for widget, value in CI_WIDGETS.get(node["type"], {}).items():
            editor.set_widget(node["id"], widget, value)
    prompt_id = editor.click_queue()
    entry = comfy.wait(prompt_id, timeout=900)
    assert editor.alerts()[alerts_before:] == [] and editor.page_errors == []
    files = [f for f in comfy.output_files(entry) if f["filename"].endswith(".mp4")]
    assert [f["node_id"] for f in files] == [str(video_node)], entry.get("outputs")
    path = comfy.local_path(files[0])
    info = read_video_info(path)
    assert (info["frames"], info["width"], info["height"]) == (math.ceil(nodes_live.SECONDS * 30), size, size)

    # the mp4 carries the graph the page queued, and dropping it onto the editor restores that graph
    tags = read_video_metadata(path)
    saved = json.loads(tags["workflow"])
    prompt = json.loads(tags["prompt"])
    assert prompt[str(video_node)]["class_type"] == next(n["type"] for n in shipped["nodes"] if n["id"] == video_node)
    assert (len(saved["nodes"]), len(saved["links"])) == (nodes, links) and saved["id"] == shipped["id"]
    editor.run_command("Comfy.NewBlankWorkflow")
    editor.wait_idle(0.5)
    assert editor.graph()["nodes"] == []
    editor.drop_file(path.name, path.read_bytes(), "video/mp4")
    restored = editor.graph()
    assert (len(restored["nodes"]), len(restored["links"])) == (nodes, links) and _same_links(restored, shipped)
    assert editor.alerts()[alerts_before:] == [] and editor.open_dialogs() == []
