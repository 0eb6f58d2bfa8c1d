"""MEMO Quality Report node, without ComfyUI (StandaloneHost), on the synthetic face models of
pack_support (one scripted face at a fixed place of a 128x128 canvas)."""

import json

import numpy as np
import pytest
import torch

from support import need
import pack_support as S  # tests/ is on the import path (pyproject.toml), so this module loads once

PACK = S.load_pack()
from comfyui_memo.memo_pipeline.face import FaceAnalyzer  # noqa: E402
from comfyui_memo.memo_pipeline.video_io import write_video  # noqa: E402
from comfyui_memo.nodes import host, memo_types  # noqa: E402

from comfyui_memo.nodes.quality_nodes import MemoQualityReport as NODE  # noqa: E402
RATE = 22050


def run(*args, **kwargs):
    out = NODE().report(*args, **kwargs)
    assert set(out) == {"ui", "result"}
    return out


@pytest.fixture(scope="module")
def face_model(tmp_path_factory):
    need("onnx")
    root = tmp_path_factory.mktemp("faces")
    analyzer = FaceAnalyzer(S.build_scrfd(root / "scrfd_10g_bnkps.onnx"), S.build_arcface(root / "glintr100.onnx"),
                            providers=["CPUExecutionProvider"])
    return memo_types.MemoFaceModel(analyzer, "memo/memo")


@pytest.fixture
def standalone(tmp_path):
    with host.use_host(host.StandaloneHost(output_dir=tmp_path / "output")) as h:
        yield h


def _audio(seconds=1.2):
    return S.comfy_audio_dict(S.speech_like(seconds, RATE), RATE)


def test_report_on_frames(face_model, standalone):
    portrait = S.portrait()
    frames = portrait.repeat(12, 1, 1, 1).clone()
    frames[8:10] = 0.0  # black: the detector stand-in still reports its face, the identity drops
    emotion = memo_types.MemoEmotion("schedule", schedule="0:neutral, 0.5:happy")
    out = run(face_model, portrait, _audio(), 10.0, 4, 1, images=frames, emotion=emotion)
    plot, summary = out["result"]
    assert plot.shape == (1, 640, 1200, 3) and plot.dtype == torch.float32 and 0 <= plot.min() and plot.max() <= 1
    data = json.loads(summary)
    ident = data["identity"]
    assert data["video"] == {"frames": 12, "fps": 10.0, "duration_s": 1.2, "frames_per_clip": 4, "clips": 3}
    assert ident["per_clip"][0]["mean"] == pytest.approx(1.0, abs=1e-4) and ident["per_clip"][2]["min"] < 0.99
    assert ident["frames_no_face"] == 0 and ident["min_at_frame"] in (8, 9)
    assert "proxy" in data["sync_proxy"]["kind"] and data["sync_proxy"]["frames_used"] == 12
    assert [s["label"] for s in data["emotion"]["segments"]] == ["neutral", "happy"]
    assert data["emotion"]["segments"][1]["start_frame"] == 5 and data["emotion"]["clip_labels"] == ["neutral", "happy", "happy"]
    assert "series" not in data  # the node's JSON carries the numbers; the plot carries the curves
    assert "sync proxy" in out["ui"]["text"][0]
    assert standalone.progress_log[-1].current == 12


def test_report_on_a_video_file(face_model, standalone, tmp_path):
    portrait = S.portrait()
    path = tmp_path / "memo_00001_.mp4"
    write_video(path, portrait.repeat(9, 1, 1, 1), fps=15)
    out = run(face_model, portrait, _audio(0.6), 30.0, 4, 2, video_path=str(path))
    data = json.loads(out["result"][1])
    assert data["video"]["frames"] == 9 and data["video"]["fps"] == 15.0 and data["identity"]["frames_scored"] == 5
    assert data["identity"]["mean"] > 0.98  # the reference itself, through H.264
    assert any("15 fps" in n for n in data["notes"]) and any("no emotion input" in n for n in data["notes"])
    assert data["emotion"] == {"note": "no emotion labels given"}


def test_report_input_errors(face_model, standalone, tmp_path):
    portrait = S.portrait()
    frames = portrait.repeat(4, 1, 1, 1)
    with pytest.raises(ValueError, match="either 'images' or 'video_path'"):
        run(face_model, portrait, _audio(), 10.0, 4, 1)
    with pytest.raises(ValueError, match="either 'images' or 'video_path'"):
        run(face_model, portrait, _audio(), 10.0, 4, 1, images=frames, video_path="x.mp4")
    with pytest.raises(ValueError, match="video_path.*no such file"):
        run(face_model, portrait, _audio(), 10.0, 4, 1, video_path=str(tmp_path / "missing.mp4"))
    haar = memo_types.MemoFaceModel(FaceAnalyzer(), "haar")
    with pytest.raises(ValueError, match="no identity network"):
        run(haar, portrait, _audio(), 10.0, 4, 1, images=frames)
    with pytest.raises(ValueError, match="reference_image' is a batch of 2"):
        run(face_model, portrait.repeat(2, 1, 1, 1), _audio(), 10.0, 4, 1, images=frames)
    with pytest.raises(ValueError, match="input 'audio'"):
        run(face_model, portrait, "speech.wav", 10.0, 4, 1, images=frames)
    detected = memo_types.MemoEmotion("detected", sample_labels=torch.zeros(16000, dtype=torch.int8), duration_s=1.0)
    with pytest.raises(ValueError, match="emotion.*detected on 1.00 s of audio"):
        run(face_model, portrait, _audio(3.0), 10.0, 4, 1, images=frames, emotion=detected)
    blind = memo_types.MemoFaceModel(FaceAnalyzer(S.build_scrfd(tmp_path / "none.onnx", faces=0),
                                                  S.build_arcface(tmp_path / "rec.onnx"),
                                                  providers=["CPUExecutionProvider"]), "blind")
    with pytest.raises(ValueError, match="reference_image.*no face"):
        run(blind, portrait, _audio(), 10.0, 4, 1, images=frames)


def test_detected_emotions_follow_the_generators_frame_mapping(face_model, standalone):
    portrait = S.portrait()
    labels = torch.cat([torch.full((8000,), 6), torch.full((11200,), 3)]).to(torch.int8)  # 1.2 s at 16 kHz
    detected = memo_types.MemoEmotion("detected", sample_labels=labels, duration_s=1.2)
    out = run(face_model, portrait, _audio(1.2), 10.0, 4, 4, images=portrait.repeat(12, 1, 1, 1), emotion=detected)
    data = json.loads(out["result"][1])
    segments = data["emotion"]["segments"]
    assert [s["label"] for s in segments] == ["sad", "happy"] and data["emotion"]["source"] == "detected"
    assert np.isclose(segments[0]["end_s"], 0.5, atol=0.1)
