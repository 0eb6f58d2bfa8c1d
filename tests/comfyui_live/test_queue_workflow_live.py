"""scripts/queue_workflow.py as a user runs it, against the live ComfyUI."""
import json
import math
import struct
import subprocess
import sys
import wave

import pytest

import memo_comfy_live as live
from support import need

live.skip_module_unless_comfyui()

pytestmark = pytest.mark.comfyui

SCRIPT = live.REPO_ROOT / "scripts" / "queue_workflow.py"

WORKFLOW = {
    "12": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}, "_meta": {"title": "Portrait"}},
    "7": {"class_type": "LoadAudio", "inputs": {"audio": "placeholder.wav"}},
    "30": {"class_type": "RepeatImageBatch", "inputs": {"image": ["12", 0], "amount": 4}},
    "31": {"class_type": "CreateVideo", "inputs": {"images": ["30", 0], "fps": 8.0, "audio": ["7", 0]}},
    "32": {"class_type": "SaveVideo", "inputs": {"video": ["31", 0], "filename_prefix": "qw/clip",
                                               "format": "auto", "codec": "auto"}},
    "33": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "qw/still"}},
}


def _wav(path, seconds=0.5, rate=16000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(9000 * math.sin(i / 7))) for i in range(int(seconds * rate))))
    return path


def _png(path, color):
    from PIL import Image
    Image.new("RGB", (32, 32), color).save(path)
    return path


def run_script(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def workflow_file(tmp_path):
    path = tmp_path / "wf_api.json"
    path.write_text(json.dumps(WORKFLOW))
    return path


def test_single_run_uploads_substitutes_and_downloads(comfy_server, workflow_file, tmp_path):
    from PIL import Image
    av = need("av")
    out = tmp_path / "out"
    portrait = _png(tmp_path / "portrait.png", (200, 30, 90))
    res = run_script(workflow_file, "--server", comfy_server, "--set", f"Portrait.image=@{portrait}",
                     "--set", f"7.audio=@{_wav(tmp_path / 'speech.wav')}", "--set", "30.amount=6",
                     "--out", out)
    assert res.returncode == 0, res.stderr
    videos = sorted((out / "qw").glob("clip_*.mp4"))
    stills = sorted((out / "qw").glob("still_*.png"))
    assert len(videos) == 1 and len(stills) == 1, res.stderr
    assert Image.open(stills[0]).convert("RGB").getpixel((5, 5)) == (200, 30, 90)
    with av.open(str(videos[0])) as c:
        assert sum(1 for _ in c.decode(video=0)) == 6  # the --set 30.amount=6 took effect
        assert len(c.streams.audio) == 1


def test_batch_runs_once_per_file(comfy_server, workflow_file, tmp_path):
    from PIL import Image
    faces = tmp_path / "faces"
    faces.mkdir()
    _png(faces / "alice.png", (10, 20, 30))
    _png(faces / "bob.png", (40, 50, 60))
    (faces / "readme.txt").write_text("skipped by --pattern")
    out = tmp_path / "out"
    res = run_script(workflow_file, "--server", comfy_server, "--set", f"7.audio=@{_wav(tmp_path / 's.wav')}",
                     "--batch", f"12.image={faces}", "--pattern", "*.png", "--out", out)
    assert res.returncode == 0, res.stderr
    table = res.stdout.splitlines()  # the summary: a header, a line a row, the counts
    assert table[0].split()[:2] == ["row", "status"] and table[-1] == "2 ok, 0 failed", res.stdout
    assert sorted(line.split()[:2] for line in table[1:3]) == [["alice.png", "ok"], ["bob.png", "ok"]], res.stdout
    for stem, color in (("alice", (10, 20, 30)), ("bob", (40, 50, 60))):
        (still,) = (out / stem / "qw").glob("still_*.png")
        assert Image.open(still).convert("RGB").getpixel((0, 0)) == color
        assert len(list((out / stem / "qw").glob("clip_*.mp4"))) == 1


def test_node_error_prints_server_error_json(comfy_server, workflow_file, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"definitely not audio" * 20)
    res = run_script(workflow_file, "--server", comfy_server, "--set",
                     f"12.image=@{_png(tmp_path / 'p.png', (1, 2, 3))}", "--set", f"7.audio=@{bad}",
                     "--out", tmp_path / "out")
    assert res.returncode == 1
    assert "node 7 (LoadAudio) failed" in res.stderr
    assert "server response:" in res.stderr and '"execution_error"' in res.stderr


def test_validation_error_names_the_node(comfy_server, workflow_file, tmp_path):
    res = run_script(workflow_file, "--server", comfy_server, "--set", "12.image=missing_face.png",
                     "--out", tmp_path / "out")
    assert res.returncode == 1
    assert "rejected the workflow (HTTP 400)" in res.stderr
    assert "node 12 (LoadImage)" in res.stderr and "missing_face.png" in res.stderr
