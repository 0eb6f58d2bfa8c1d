"""`python -m memo_pipeline report`: outputs never replace an input, bad outputs and numbers are refused
before the analysis, and a reference without a face is reported as such (issue 23, points 1, 9, 13).
Uses the synthetic talking head and stand-in face models of test_quality_cli.py."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from support import load_module, need

need("onnx")
need("skimage.data")

C = load_module("memo_test_quality_cli", Path(__file__).with_name("test_quality_cli.py"))
case = C.case  # the module-scoped fixture: (folder with ckpt/ and portrait.png, talking.mp4)
from memo_pipeline import quality  # noqa: E402
from memo_pipeline.cli import main  # noqa: E402


def report_args(root, video, *extra):
    return ["report", str(video), "--reference", str(root / "portrait.png"), "--checkpoint", str(root / "ckpt"),
            "--identity-every", "50", "--device", "cpu", *extra]


@pytest.fixture
def no_analysis(monkeypatch):
    """Fails the test if the analysis starts: refusals must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the analysis ran before the outputs were checked")
    monkeypatch.setattr(quality, "analyze_video", refuse)


def digest(path: Path) -> bytes:
    return path.read_bytes()


def test_json_or_plot_onto_an_input_is_refused(case, tmp_path, capsys, no_analysis):
    root, video = case
    before_video, before_portrait = digest(video), digest(root / "portrait.png")
    (tmp_path / "link.mp4").symlink_to(video)
    os.link(root / "portrait.png", tmp_path / "hard.png")
    attempts = [("--json", video), ("--plot", root / "portrait.png"), ("--json", root / "portrait.png"),
                ("--json", tmp_path / "link.mp4"), ("--plot", tmp_path / "hard.png")]
    for flag, target in attempts:
        for overwrite in ([], ["--overwrite"]):
            assert main(report_args(root, video, flag, str(target), *overwrite)) == 2, (flag, target, overwrite)
            err = capsys.readouterr().err
            assert "would destroy the input" in err and err.count("\n") == 1, err
    assert digest(video) == before_video and digest(root / "portrait.png") == before_portrait
    out = tmp_path / "same.png"
    assert main(report_args(root, video, "--json", str(out), "--plot", str(out))) == 2
    assert "--json and --plot are the same file" in capsys.readouterr().err


def test_bad_output_places_are_refused_before_the_analysis(case, tmp_path, capsys, no_analysis):
    root, video = case
    (tmp_path / "afile").write_text("x")
    cases = [(["--json", str(tmp_path)], "is a folder"),
             (["--plot", str(tmp_path)], "is a folder"),
             (["--json", str(tmp_path / "afile" / "r.json")], "is not a folder"),
             (["--plot", str(tmp_path / "plot.nope")], "unknown picture type"),
             (["--plot", str(tmp_path / "plot")], "unknown picture type"),
             (["--json", str(tmp_path / "afile")], "already exists; pass --overwrite")]
    for extra, message in cases:
        assert main(report_args(root, video, *extra)) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: ") and err.count("\n") == 1, (extra, err)
    assert (tmp_path / "afile").read_text() == "x"


def test_unwritable_output_folder_is_refused_before_the_analysis(case, tmp_path, capsys, no_analysis, monkeypatch):
    root, video = case
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # root may write anywhere, so the folder's permission answer is simulated; the check must ask it
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    assert main(report_args(root, video, "--json", str(locked / "new" / "r.json"))) == 2
    assert f"the folder {locked} is not writable" in capsys.readouterr().err


def test_existing_outputs_need_overwrite_and_are_replaced_whole(case, tmp_path, capsys):
    root, video = case
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    out_json.write_text("old")
    assert main(report_args(root, video, "--json", str(out_json))) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and out_json.read_text() == "old"
    assert main(report_args(root, video, "--json", str(out_json), "--plot", str(out_png), "--overwrite")) == 0
    assert json.loads(out_json.read_text())["video"]["frames"] == 100
    assert out_png.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.png"]  # no temporary left behind
    mask = os.umask(0)
    os.umask(mask)
    assert out_json.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("lag, message", [("-5", "cannot be negative"), ("-1", "cannot be negative"),
                                          ("100", "not shorter than the video (100 frames)"),
                                          ("1000000000", "not shorter than the video")])
def test_max_lag_outside_the_video_is_refused(case, lag, message, capsys, no_analysis):
    root, video = case
    assert main(report_args(root, video, "--max-lag", lag)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_max_lag_is_searched_as_given(case, tmp_path, capsys):
    root, video = case
    out = tmp_path / "r.json"
    assert main(report_args(root, video, "--max-lag", "4", "--json", str(out))) == 0
    sync = json.loads(out.read_text())["sync_proxy"]
    assert sorted(int(k) for k in sync["correlation_by_lag"]) == list(range(-4, 5))


def test_library_refuses_a_negative_lag(case):
    root, video = case
    analyzer = C.Q.FaceAnalyzer(str(root / "ckpt/misc/face_analysis/models/scrfd_10g_bnkps.onnx"),
                                str(root / "ckpt/misc/face_analysis/models/glintr100.onnx"),
                                providers=["CPUExecutionProvider"], det_size=C.Q.DET)
    frames = C.Q.talking_head(C.Q.syllables(20, seed=1), 0)
    reporter = quality.QualityReporter(analyzer, frames[0], 25.0)
    reporter.add_frames(frames)
    with pytest.raises(ValueError, match="cannot be negative"):
        reporter.finish((C.Q.speech(C.Q.syllables(20, seed=1)), C.Q.RATE), max_lag=-5)


def test_reference_without_a_face_warns_and_is_marked(case, tmp_path, capsys):
    root, video = case
    from PIL import Image

    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(black)  # the stand-in detector sees no face here
    out, plot = tmp_path / "r.json", tmp_path / "r.png"
    args = report_args(root, video, "--json", str(out), "--plot", str(plot))
    args[args.index("--reference") + 1] = str(black)
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"warning: no face found in the reference image {black}" in captured.err
    assert "identity: NOT SCORED: no face found in the reference image" in captured.out
    data = json.loads(out.read_text())
    assert data["identity"]["reference_face_found"] is False and data["identity"]["reference_face"] is None
    assert data["identity"]["frames_scored"] == 0 and data["identity"]["mean"] is None
    assert all(v is None for v in data["series"]["identity"])
    assert any("no face found in the reference" in n for n in data["notes"])
    assert data["sync_proxy"]["peak_r"] is not None  # the parts that need no reference face are still there
    # with a face in the reference, the JSON says which face was compared
    assert main(report_args(root, video, "--json", str(out), "--overwrite")) == 0
    face = json.loads(out.read_text())["identity"]
    assert face["reference_face_found"] is True and face["reference_face"]["score"] > 0.5
    assert len(face["reference_face"]["box"]) == 4
