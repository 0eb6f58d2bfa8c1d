"""The shipped editor workflows as the ComfyUI frontend and template browser meet them.

* each editor file passes the frontend's workflow schema (tests/frontend_workflow_schema.py, written
  from the schema bundled in comfyui-frontend-package 1.35.9), so loading it raises no alert;
* ComfyUI's template scan (app/custom_node_manager.py in 0.8.0) globs `custom_nodes/*/workflows/*.json`:
  that level must hold exactly the editor graphs, each with the `<name>.jpg` thumbnail the frontend
  asks for; the API files live in workflows/api/, which the scan does not reach.
The real frontend and server are exercised by tests/comfyui_live (test_frontend_live.py).
"""
import copy
import glob
import importlib.util
import json
import os
import uuid
from pathlib import Path

import pytest

from frontend_workflow_schema import LITEGRAPH_VERSION, validate_workflow

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
NAMES = ["memo_talking_video", "memo_schedule_paste_back", "memo_long_audio_to_file"]


def _editor(name):
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def _generator():
    spec = importlib.util.spec_from_file_location("memo_make_workflows_frontend", WORKFLOWS / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NAMES)
def test_editor_workflow_passes_the_frontend_schema(name):
    data = _editor(name)
    assert validate_workflow(data) == []
    assert data["version"] == LITEGRAPH_VERSION
    assert uuid.UUID(data["id"]).version == 5 and data["id"] == _generator().workflow_id(name)


def test_workflow_ids_are_distinct():
    ids = [_editor(name)["id"] for name in NAMES]
    assert len(set(ids)) == len(ids)


def _broken(name, change):
    data = copy.deepcopy(_editor(name))
    change(data)
    return validate_workflow(data)


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(id="comfyui-memo-memo_talking_video"), "id: Invalid uuid"),
    (lambda d: d.update(id="123e4567-e89b-12d3-a456-42661417400"), "id: Invalid uuid"),
    (lambda d: d.pop("version"), "version: Workflow does not contain a valid version"),
    (lambda d: d.update(version="0.4"), "version: Workflow does not contain a valid version"),
    (lambda d: d.update(version=1), "version-1 graphs are not covered"),
    (lambda d: d.pop("last_link_id"), "last_link_id: required"),
    (lambda d: d["links"][0].pop(), "links[0]: expected a 6-item link"),
    (lambda d: d["links"][0].__setitem__(2, "x"), "links[0][2]: invalid slot index"),
    (lambda d: d["nodes"][0].pop("flags"), "nodes[0].flags: required"),
    (lambda d: d["nodes"][0].__setitem__("pos", [1, 2, 3]), "nodes[0].pos: expected 2 numbers"),
    (lambda d: d["nodes"][0].__setitem__("order", True), "nodes[0].order: expected number"),
    (lambda d: d["nodes"][0].__setitem__("color", None), "nodes[0].color: expected a value, got null"),
    (lambda d: d["nodes"][0]["properties"].__setitem__("aux_id", "no-slash"), "nodes[0].properties.aux_id"),
    (lambda d: d["nodes"][0]["properties"].__setitem__("ver", "1.2"), "invalid node pack version"),
    (lambda d: d["nodes"][0]["properties"].__setitem__(
        "models", [{"name": "a.safetensors", "url": "not a url", "directory": "vae"}]),
     "nodes[0].properties.models[0].url: Invalid url"),
    (lambda d: d.__setitem__("models", [{"name": "a.safetensors", "url": "https://example.org/a"}]),
     "models[0].directory: required"),
    (lambda d: d["extra"].__setitem__("workflowRendererVersion", "GL"), "extra.workflowRendererVersion"),
    (lambda d: d["nodes"][0]["outputs"][0].__setitem__("links", ["1"]), "nodes[0].outputs[0].links[0]"),
])
def test_schema_check_finds_what_the_frontend_rejects(change, expected):
    problems = _broken("memo_talking_video", change)
    assert any(expected in p for p in problems), problems


def test_schema_check_accepts_what_the_frontend_accepts():
    def change(d):
        d.update(id=str(uuid.uuid4()).upper(), config=None, extra=None, last_node_id="13")
        d["nodes"][0]["pos"] = {"0": 1.5, "1": 2}
        d["nodes"][0]["properties"].update(cnr_id="comfyui-memo", ver="v1.0.0", anything={"passes": True})
        d["nodes"][0]["properties"]["models"] = [{"name": "v.safetensors", "url": "https://example.org/v.safetensors",
                                                  "directory": "vae"}]
        d["links"][0][2] = "0"
    assert _broken("memo_talking_video", change) == []


# ----------------------------------------------------------------------------- template layout

def _template_scan(custom_nodes: Path) -> dict[str, list[str]]:
    """What GET /workflow_templates answers (ComfyUI 0.8.0 app/custom_node_manager.py), for one folder."""
    found = {}
    for folder_name in ("example_workflows", "example", "examples", "workflow", "workflows"):
        for path in glob.glob(os.path.join(custom_nodes, f"*/{folder_name}/*.json")):
            pack = os.path.basename(os.path.dirname(os.path.dirname(path)))
            found.setdefault(pack, []).append(os.path.splitext(os.path.basename(path))[0])
    return found


def test_template_scan_lists_exactly_the_editor_workflows(tmp_path):
    (tmp_path / "comfyui-memo").symlink_to(REPO, target_is_directory=True)
    listed = _template_scan(tmp_path)
    assert sorted(listed) == ["comfyui-memo"]
    assert sorted(listed["comfyui-memo"]) == sorted(NAMES)
    for name in listed["comfyui-memo"]:
        assert "nodes" in _editor(name) and "links" in _editor(name)  # an editor graph, not an API prompt


@pytest.mark.parametrize("name", NAMES)
def test_each_template_has_a_jpeg_thumbnail(name):
    from PIL import Image

    path = WORKFLOWS / f"{name}.jpg"  # the frontend asks for /api/workflow_templates/<pack>/<name>.jpg
    assert path.is_file(), f"missing thumbnail {path.name} (python scripts/make_template_thumbnails.py)"
    assert path.stat().st_size < 150_000
    with Image.open(path) as image:
        assert image.format == "JPEG" and 200 <= image.width <= 1024 and 150 <= image.height <= 1024
        assert len(image.convert("L").resize((32, 32)).getcolors(1024)) > 8  # a picture, not a blank


@pytest.mark.parametrize("name", NAMES)
def test_api_files_sit_outside_the_template_folder(name):
    prompt = json.loads((WORKFLOWS / "api" / f"{name}_api.json").read_text())
    assert all("class_type" in node for node in prompt.values())
    assert not (WORKFLOWS / f"{name}_api.json").exists()
