"""Files the nodes write carry ComfyUI's prompt and workflow, as core's Save Video / Save Latent do,
so that dropping them onto the ComfyUI editor restores the graph.

ComfyUI hands every node that declares the hidden inputs `prompt` (the API prompt) and
`extra_pnginfo` (the editor sends {"workflow": <graph>} there). The mp4 stores each entry as JSON text
in a container tag (what the frontend's ISOBMFF reader looks for), the state file in its safetensors
metadata (what the frontend reads from a dropped .safetensors). Here both are written by the nodes
on tiny models and read back: the mp4 with PyAV, the state with safetensors.
"""
import json

import av
import pytest
from safetensors import safe_open

import pack_support as S
from test_nodes import (  # noqa: F401 - fixtures
    NODES, PACK, encoded, face, generate_to_file, loaded, memo_host, models_root, run, sample, speech, vae)
from comfyui_memo.memo_pipeline.video_io import VideoWriter, read_video_metadata, write_video  # noqa: E402
from comfyui_memo.nodes import common, host  # noqa: E402

PROMPT = {"11": {"class_type": "MemoGenerateToFile", "inputs": {"seed": 7, "filename_prefix": "MEMO/tést \"q\""}},
          "1": {"class_type": "LoadImage", "inputs": {"image": "portrait.png"}}}
WORKFLOW = {"id": "6f0e8a52-59c4-5c65-9d54-8d3d2b7e9d0c", "version": 0.4, "last_node_id": 11, "last_link_id": 0,
            "nodes": [{"id": 11, "type": "MemoGenerateToFile", "widgets_values": [7, "fixed", "MEMO/x\n"]}],
            "links": [], "extra": {"ds": {"scale": 1, "offset": [0, 0]}}}
EXTRA = {"workflow": WORKFLOW, "note": ["any", {"json": None}]}


def test_node_declarations_take_the_hidden_inputs():
    """V3 output nodes get ComfyUI's hidden prompt and workflow; the file writers pass them on."""
    import inspect

    from comfyui_memo.nodes import implementation

    classes = {cls.GET_SCHEMA().node_id: cls for cls in S.comfy_nodes().node_classes()}
    for name in ("MemoGenerateToFile", "MemoSaveState"):
        assert classes[name].INPUT_TYPES()["hidden"] == {"prompt": ("PROMPT",), "extra_pnginfo": ("EXTRA_PNGINFO",)}
        assert {"prompt", "extra_pnginfo"} <= set(inspect.signature(implementation(name)).parameters)
    for name, cls in classes.items():  # the other nodes write no file (Quality Report is an output node only)
        if name not in ("MemoGenerateToFile", "MemoSaveState", "MemoQualityReport"):
            assert "hidden" not in cls.INPUT_TYPES(), name


def test_workflow_metadata_matches_core_savers():
    assert common.workflow_metadata(PROMPT, EXTRA) == {"workflow": WORKFLOW, "note": EXTRA["note"], "prompt": PROMPT}
    assert common.workflow_metadata(PROMPT, None) == {"prompt": PROMPT}
    assert common.workflow_metadata(None, None) is None


def test_video_writer_stores_and_reads_back_metadata(tmp_path):
    import numpy as np

    path = tmp_path / "m.mp4"
    metadata = {"prompt": PROMPT, **EXTRA}
    write_video(path, np.zeros((3, 16, 16, 3), np.uint8), 10, metadata=metadata)
    tags = read_video_metadata(path)
    assert {key: json.loads(tags[key]) for key in metadata} == metadata
    with av.open(str(path)) as container:  # plain PyAV sees the same tags
        assert json.loads(container.metadata["workflow"]) == WORKFLOW
    plain = tmp_path / "plain.mp4"
    write_video(plain, np.zeros((3, 16, 16, 3), np.uint8), 10)
    assert not {"prompt", "workflow"} & set(read_video_metadata(plain))


@pytest.mark.parametrize("metadata, message", [
    ({"prompt": object()}, "not JSON-serialisable"), ({"": 1}, "non-empty string"), ({"a=b": 1}, "without '='"),
    (["prompt"], "must be a dict"),
])
def test_video_writer_rejects_bad_metadata_before_creating_a_file(tmp_path, metadata, message):
    with pytest.raises(ValueError, match=message):
        VideoWriter(tmp_path / "x.mp4", 10, metadata=metadata)
    assert list(tmp_path.iterdir()) == []


def test_generate_to_file_writes_prompt_and_workflow_into_the_mp4(loaded, vae, encoded, face, memo_host):
    out = generate_to_file(loaded, vae, encoded, face, max_clips=1, prompt=PROMPT, extra_pnginfo=EXTRA)
    tags = read_video_metadata(out["result"][0])
    assert json.loads(tags["prompt"]) == PROMPT
    assert json.loads(tags["workflow"]) == WORKFLOW and json.loads(tags["note"]) == EXTRA["note"]
    # stopped after clip 1 of 3: the state to continue is saved next to the video, with the same graph
    state_path = out["result"][0][: -len(".mp4")] + ".state.safetensors"
    with safe_open(state_path, "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["workflow"]) == WORKFLOW and json.loads(meta["prompt"]) == PROMPT
    (resumed,) = run("MemoLoadState", state_path.split("/output/", 1)[1])  # still loads as a MEMO state
    assert resumed.next_clip == 1


def test_generate_to_file_without_hidden_inputs_writes_no_workflow(loaded, vae, encoded, face, memo_host):
    out = generate_to_file(loaded, vae, encoded, face, max_clips=1)
    assert not {"prompt", "workflow"} & set(read_video_metadata(out["result"][0]))


def test_save_state_writes_prompt_and_workflow(loaded, vae, encoded, face, memo_host):
    _, _, state, _ = sample(loaded, vae, encoded, face, max_clips=1)
    hostile = {"workflow": WORKFLOW, "num_frames": "not this"}  # cannot override what the state needs
    out = NODES["MemoSaveState"]().save(state, "states/wf", prompt=PROMPT, extra_pnginfo=hostile)
    with safe_open(out["result"][0], "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["workflow"]) == WORKFLOW and json.loads(meta["prompt"]) == PROMPT
    assert json.loads(meta["num_frames"]) == state.num_frames
    (loaded_state,) = run("MemoLoadState", "states/wf_00001_.state.safetensors")
    assert loaded_state.next_clip == 1


def test_disable_metadata_is_honoured():
    class NoMetadataHost(host.StandaloneHost):  # what ComfyHost answers under --disable-metadata
        def metadata_disabled(self):
            return True

    with host.use_host(NoMetadataHost()):
        assert common.workflow_metadata(PROMPT, EXTRA) is None
    assert common.workflow_metadata(PROMPT, None) == {"prompt": PROMPT}
