"""A real ComfyUI starts on CPU, lists the core nodes we build on, and runs core-only prompts.

These pin the facts docs/comfyui_notes.md states (input names, AUDIO/VIDEO handling,
error reporting) against the live server.
"""
import io
import math
import struct
import wave

import pytest

import memo_comfy_live as live
from support import need

live.skip_module_unless_comfyui()

pytestmark = pytest.mark.comfyui


def _write_wav(path, seconds=1.0, rate=16000, freq=440.0):
    n = int(seconds * rate)
    frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * i / rate))) for i in range(n))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


def test_server_runs_on_cpu(comfy):
    stats = comfy.get_json("/system_stats")
    assert stats["system"]["comfyui_version"], stats
    assert [d["type"] for d in stats["devices"]] == ["cpu"]
    assert "--cpu" in stats["system"]["argv"]


def test_core_nodes_are_registered(comfy):
    names = comfy.node_names()
    for node in ("CreateVideo", "SaveVideo", "LoadAudio", "LoadImage", "VAELoader", "SaveImage", "EmptyImage"):
        assert node in names, f"{node} missing from /object_info"


def test_no_module_failed_to_import(comfy):
    assert comfy.import_failures() == {}, comfy.server.log_tail(120)


def test_linked_pack_registers_its_nodes(comfy):
    if not comfy.server.pack_linked:
        pytest.skip("COMFYUI_LINK_PACK=0: the server runs without this pack")
    names = comfy.pack_node_names()
    assert names, f"custom_nodes/{live.PACK_DIR_NAME} registered no nodes:\n{comfy.server.log_tail(80)}"
    assert not names & {"LoadImage", "SaveVideo"}  # core nodes are not attributed to the pack


def test_video_node_inputs_match_the_notes(comfy):
    create = comfy.node_info("CreateVideo")
    assert list(create["input"]["required"]) == ["images", "fps"]
    assert list(create["input"]["optional"]) == ["audio"]
    assert create["input"]["optional"]["audio"][0] == "AUDIO"
    assert create["output"] == ["VIDEO"]
    save = comfy.node_info("SaveVideo")
    assert list(save["input"]["required"]) == ["video", "filename_prefix", "format", "codec"]
    assert save["output_node"] is True


def test_empty_image_to_save_image_writes_png(comfy, queue_and_wait):
    from PIL import Image

    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0xFF0000}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "live/red"}},
    }
    entry = queue_and_wait(prompt, timeout=120)
    files = comfy.output_files(entry)
    assert [(f["node_id"], f["subfolder"]) for f in files] == [("2", "live")]
    img = Image.open(io.BytesIO(comfy.fetch(files[0])))
    assert img.size == (64, 48)
    assert img.convert("RGB").getpixel((10, 10)) == (255, 0, 0)
    assert comfy.local_path(files[0]).is_file()


def test_uploaded_image_round_trips_through_load_image(comfy, queue_and_wait, upload_file, tmp_path):
    from PIL import Image

    src = Image.new("RGB", (40, 24))
    src.putpixel((3, 5), (10, 200, 30))
    src.putpixel((39, 23), (250, 1, 128))
    path = tmp_path / "portrait.png"
    src.save(path)
    name = upload_file(path)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "live/roundtrip"}},
    }
    entry = queue_and_wait(prompt, timeout=120)
    (out,) = comfy.output_files(entry)
    got = Image.open(io.BytesIO(comfy.fetch(out))).convert("RGB")
    assert got.tobytes() == src.tobytes()


def test_audio_and_frames_make_an_mp4_with_sound(comfy, queue_and_wait, upload_file, tmp_path):
    av = need("av")
    name = upload_file(_write_wav(tmp_path / "speech.wav", seconds=1.0))
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 8, "color": 0x2040F0}},
        "2": {"class_type": "LoadAudio", "inputs": {"audio": name}},
        "3": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0, "audio": ["2", 0]}},
        "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "live/talk",
                                                  "format": "mp4", "codec": "h264"}},
    }
    entry = queue_and_wait(prompt, timeout=180)
    (out,) = comfy.output_files(entry)
    assert out["filename"].endswith(".mp4")
    with av.open(io.BytesIO(comfy.fetch(out))) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264"
        assert (video.width, video.height) == (64, 64)
        assert sum(1 for _ in container.decode(video=0)) == 8
        assert len(container.streams.audio) == 1
        assert container.streams.audio[0].codec_context.name == "aac"


def test_execution_error_reports_node_and_message(comfy, upload_file, tmp_path):
    bogus = tmp_path / "not_audio.wav"
    bogus.write_bytes(b"this is not a wave file at all" * 10)
    name = upload_file(bogus)
    prompt = {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": name}},
        "2": {"class_type": "SaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": "live/bad"}},
    }
    with pytest.raises(live.ComfyError) as err:
        comfy.queue_and_wait(prompt, timeout=120)
    assert "node 1 (LoadAudio) failed" in str(err.value)


def test_validation_error_carries_server_json(comfy):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "no_such_file.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    with pytest.raises(live.ComfyError) as err:
        comfy.queue(prompt)
    payload = err.value.payload
    assert payload["error"]["type"] == "prompt_outputs_failed_validation"
    assert "1" in payload["node_errors"]
    assert "no_such_file.png" in str(err.value)
