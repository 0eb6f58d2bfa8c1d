"""`python -m memo_pipeline report`: the three parts printed, the JSON and the plot written, face models
found like `generate` finds them. Uses the synthetic talking head of test_quality.py."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support import load_module, need

need("onnx")
need("skimage.data")


Q = load_module("memo_test_quality", Path(__file__).with_name("test_quality.py"))
from memo_pipeline.cli import main  # noqa: E402
from memo_pipeline.video_io import write_video  # noqa: E402


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_cli")
    models = root / "ckpt" / "misc" / "face_analysis" / "models"
    models.mkdir(parents=True)
    Q.build_gated_scrfd(models / "scrfd_10g_bnkps.onnx", Q.HEAD_KPS, (40.0, 24.0, 88.0, 84.0))
    rng = np.random.default_rng(7)
    Q.F.build_arcface(models / "glintr100.onnx", (rng.normal(size=(588, 512)) / 10).astype(np.float32),
                      rng.normal(size=(512,)).astype(np.float32))
    envelope = Q.syllables(100, seed=4)
    frames = Q.talking_head(envelope, -2)
    video = root / "talking.mp4"
    write_video(video, frames, fps=Q.FPS, audio=(Q.speech(envelope), Q.RATE))
    from PIL import Image

    Image.fromarray(frames[0]).save(root / "portrait.png")
    return root, video


def test_report_prints_three_parts_and_writes_json_and_plot(case, capsys):
    root, video = case
    out_json, out_png = root / "out" / "report.json", root / "out" / "report.png"
    code = main(["report", str(video), "--reference", str(root / "portrait.png"), "--checkpoint", str(root / "ckpt"),
                 "--emotion", "0:neutral, 2:happy", "--json", str(out_json), "--plot", str(out_png),
                 "--identity-every", "10", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "identity (ArcFace cosine to the reference): mean" in printed
    assert "sync proxy (mouth motion vs speech energy, not SyncNet): peak r" in printed
    assert "emotion timeline: 0.00-2.00 s neutral; 2.00-4.00 s happy" in printed
    data = json.loads(out_json.read_text())
    assert data["video"]["frames"] == 100 and abs(data["sync_proxy"]["lag_frames"] + 2) <= 1
    assert len(data["series"]["identity"]) == 100 and data["identity"]["frames_scored"] == 10
    from PIL import Image

    with Image.open(out_png) as plot:
        assert plot.size == (1200, 640)


def test_report_face_model_lookup_and_errors(case, capsys, tmp_path, monkeypatch):
    root, video = case
    args = ["report", str(video), "--reference", str(root / "portrait.png"), "--identity-every", "50"]
    assert main([*args, "--face-models", str(root / "ckpt" / "misc" / "face_analysis" / "models")]) == 0
    assert "emotion: no labels given" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)  # nothing at ./models/memo/memo
    assert main(args) == 2
    assert "no face models" in capsys.readouterr().err
    shutil.copytree(root / "ckpt", tmp_path / "models" / "memo" / "memo")  # the README's layout is the default
    assert main(args) == 0
    assert main([*args, "--emotion2vec", str(tmp_path / "nowhere.pt")]) == 2
    assert "--emotion2vec needs --checkpoint" in capsys.readouterr().err


def test_report_with_emotions_detected_again(case, tiny_bundle, capsys):
    root, video = case
    code = main(["report", str(video), "--reference", str(root / "portrait.png"), "--identity-every", "50",
                 "--face-models", str(root / "ckpt"), "--checkpoint", str(tiny_bundle["memo"]),
                 "--emotion2vec", str(tiny_bundle["emotion2vec"])])
    printed = capsys.readouterr().out
    assert code == 0 and "emotion timeline: 0.00-" in printed
