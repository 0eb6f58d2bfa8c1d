"""`models fetch` against a fake Hugging Face server on 127.0.0.1 serving tiny checkpoints.

The server speaks the part of the Hub protocol huggingface_hub uses for single files:
HEAD/GET /<repo>/resolve/<revision>/<path> with X-Repo-Commit, ETag / X-Linked-Etag (SHA-256 of
LFS files, git blob SHA-1 of the others), X-Linked-Size and HTTP Range requests. It can drop a
connection in the middle of a file, go down, or send corrupted bytes. No test here opens a socket
to anything but 127.0.0.1.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from memo_pipeline import model_files as mf
from memo_pipeline.cli import main
from model_trees import loopback_only, repo_contents, write_release_tree  # noqa: F401 - autouse fixture

from support import need  # noqa: E402

need("onnx")

COMMIT = "3f1c2b9d0e8a7f6b5c4d3e2f1a0b9c8d7e6f5a4b"
TOKEN = "hf_test_token_123"
LFS_SUFFIXES = (".safetensors", ".onnx", ".pt")


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.log: list[tuple[str, str, str | None, str | None]] = []
        self.drop_after: dict[str, int] = {}  # file path -> bytes sent before the connection is cut (first GET only)
        self.down_after_drop = False
        self.down = False
        self.corrupt: set[str] = set()
        self.silent: set[str] = set()  # GET answers its headers, then sends nothing
        self.trickle: dict[str, float] = {}  # GET sends one byte every so many seconds
        self.stop = threading.Event()  # ends the silent and trickling answers (they also end by themselves)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                self.serve(head=True)

            def do_GET(self):
                self.serve(head=False)

            def reply(self, code: int, headers: dict | None = None, body: bytes = b""):
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def serve(self, head: bool):
                rng = self.headers.get("Range")
                hub.log.append((self.command, unquote(self.path), rng, self.headers.get("Authorization")))
                if hub.down:
                    return self.reply(503, body=b"service unavailable")
                # a request sent through an HTTP proxy names the whole URL (the server doubles as the proxy)
                path = urlsplit(self.path).path if self.path.startswith("http://") else self.path
                parts = unquote(path).lstrip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self.reply(404)
                repo, name = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
                data = hub.repos.get(repo, {}).get(name)
                if data is None:
                    return self.reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
                headers = {"X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes"}
                if name.endswith(LFS_SUFFIXES):
                    digest = hashlib.sha256(data).hexdigest()
                    headers.update({"X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(len(data)), "ETag": f'"{digest}"'})
                else:
                    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                    headers["ETag"] = f'"{blob}"'
                if name in hub.corrupt:
                    data = data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:]
                if head:
                    self.send_response(200)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return
                start = 0
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                if name in hub.silent or name in hub.trickle:
                    self.send_response(206 if rng else 200)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.flush()
                    interval = hub.trickle.get(name, 15.0)
                    for index in range(60 if name in hub.trickle else 1):  # bounded: never longer than 15 s
                        if hub.stop.wait(interval):
                            break
                        if name in hub.trickle:
                            self.wfile.write(body[index:index + 1])
                            self.wfile.flush()
                    self.close_connection = True
                    return
                cut = hub.drop_after.pop(name, None) if not rng else None
                if cut is None:
                    return self.reply(206 if rng else 200, headers, body)
                self.send_response(200)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:cut])
                self.wfile.flush()
                hub.down = hub.down_after_drop
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def gets(self) -> list[str]:
        return [path for method, path, _, _ in self.log if method == "GET"]

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def test_the_socket_guard_refuses_other_hosts():
    with socket.socket() as sock, pytest.raises(AssertionError, match="192.0.2.1"):
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: refused by the guard before any packet is sent


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_release_tree(tmp_path_factory.mktemp("release") / "models")


@pytest.fixture
def hub(release, monkeypatch):
    server = FakeHub(repo_contents(release))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield server
    server.close()
    huggingface_hub.close_session()  # no HTTP client configured by one test leaks into the next


def fetch(capsys, comfy: Path, *args) -> tuple[int, str]:
    code = main(["models", "fetch", "--comfyui", str(comfy), *args])
    return code, capsys.readouterr().out


def planned(features) -> dict[str, str]:
    """local path under models/ -> '/<repo>/resolve/main/<path>' for every file of `features`."""
    return {local: f"/{item.source.repo_id}/resolve/main/{repo_path}"
            for item in mf.items_for(features) for repo_path, local in item.files}


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def comfy(tmp_path) -> Path:
    (tmp_path / "ComfyUI/models").mkdir(parents=True)
    return tmp_path / "ComfyUI"


def test_fetch_installs_exactly_the_needed_files_and_check_passes(hub, comfy, release, capsys):
    code, out = fetch(capsys, comfy, "--yes")
    assert code == 0, out
    models = comfy / "models"
    expected = planned(mf.FEATURES)
    assert files_under(models) == set(expected)  # exactly these files, nothing else (no staging left)
    for local in expected:
        assert (models / local).read_bytes() == (release / local).read_bytes(), local
    assert sorted(hub.gets()) == sorted(expected.values())  # each file once, no repository listing
    assert all(auth == f"Bearer {TOKEN}" for _, _, _, auth in hub.log)  # HF_TOKEN is sent
    total = sum(len(data) for files in hub.repos.values() for data in files.values())
    assert f"will download {len(expected)} files, {mf.format_size(total)} in total" in out
    assert "licence of memoavatar/memo: Apache-2.0" in out and "licence of stabilityai/sd-vae-ft-mse-original: MIT" in out
    assert main(["models", "check", "--comfyui", str(comfy)]) == 0
    assert "core     OK" in capsys.readouterr().out
    # a second run finds everything and downloads nothing
    hub.log.clear()
    code, out = fetch(capsys, comfy, "--yes")
    assert code == 0 and "nothing to fetch" in out and hub.log == []
    # the fetched files are what `generate` reads (single-file VAE, wav2vec2 folder, emotion2vec model.pt),
    # and generating touches no network (the socket guard refuses anything but 127.0.0.1, the hub sees nothing)
    from memo_pipeline.cli import make_test_portrait, make_test_tone
    from memo_pipeline.video_io import read_video_info

    work = comfy.parent / "work"
    (work / "no-face-models").mkdir(parents=True)
    video = work / "out.mp4"
    code = main(["generate", "--checkpoint", str(models / mf.MEMO_DIR), "--vae", str(models / "vae" / mf.VAE_FILE),
                 "--wav2vec", str(models / mf.WAV2VEC_DIR), "--emotion2vec", str(models / mf.EMOTION2VEC_DIR / "model.pt"),
                 "--image", str(make_test_portrait(work / "portrait.png", 64)),
                 "--audio", str(make_test_tone(work / "tone.wav", 1.0)), "--out", str(video), "--resolution", "64",
                 "--steps", "1", "--face-models", str(work / "no-face-models"), "--allow-no-face", "--no-progress"])
    assert code == 0 and read_video_info(video)["frames"] == 30 and hub.log == []


def test_only_fetches_only_its_files(hub, comfy, capsys):
    code, out = fetch(capsys, comfy, "--only", "face", "--yes")
    assert code == 0, out
    expected = planned(["face"])
    assert files_under(comfy / "models") == set(expected)
    assert sorted(hub.gets()) == sorted(expected.values())
    assert "face     OK" in out and "core" not in out.split("will download")[0]


def test_interrupted_download_resumes(hub, comfy, capsys, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub writes what it received in chunks of DOWNLOAD_CHUNK_SIZE (10 MB); a smaller chunk
    # lets a 2.8 MB tiny file keep part of its bytes when the connection drops
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    weights = "diffusion_net/diffusion_pytorch_model.safetensors"
    hub.drop_after[weights] = 200_000
    hub.down_after_drop = True  # the connection drops, then the server is gone (also for the in-process retry)
    code, out = fetch(capsys, comfy, "--only", "core", "--yes")
    assert code == 1
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and weights in errors[0] and "Run the same command again" in errors[0]
    assert "installed so far: MEMO reference net" in errors[0]
    models = comfy / "models"
    assert (models / "memo/memo/reference_net/diffusion_pytorch_model.safetensors").is_file()
    assert not (models / "memo/memo/diffusion_net").exists()  # nothing half-written where a loader looks
    part = models / ".memo-fetch/memo/memo/diffusion_net/diffusion_pytorch_model.safetensors.part"
    kept = part.stat().st_size
    assert 0 < kept <= 200_000
    # the server is back: the next run continues from the .part file with a Range request
    hub.down, hub.down_after_drop = False, False
    hub.log.clear()
    code, out = fetch(capsys, comfy, "--only", "core", "--yes")
    assert code == 0, out
    resumed = [(path, rng) for method, path, rng, _ in hub.log if method == "GET" and path.endswith(weights)]
    assert resumed == [(f"/memoavatar/memo/resolve/main/{weights}", f"bytes={kept}-")]
    assert "resuming diffusion_net/diffusion_pytorch_model.safetensors" in out
    assert not any("reference_net" in path for path in hub.gets())  # finished items are not downloaded again
    assert mf.check_models(models, ["core"]).exit_code == 0
    assert not (models / ".memo-fetch").exists()


def test_corrupted_download_is_detected_and_not_installed(hub, comfy, capsys):
    name = f"misc/face_analysis/models/{mf.RECOGNIZER_FILE}"
    hub.corrupt.add(name)
    code, out = fetch(capsys, comfy, "--only", "face", "--yes")
    assert code == 1
    assert "arrived corrupted (sha256" in out and "not installed" in out
    models = comfy / "models"
    assert not (models / mf.MEMO_DIR / name).exists()
    assert not list((models / ".memo-fetch").rglob("*.onnx*"))
    hub.corrupt.clear()
    code, out = fetch(capsys, comfy, "--only", "face", "--yes")
    assert code == 0, out


def test_download_that_does_not_load_is_not_installed(hub, comfy, capsys):
    # the server's copy itself is wrong (its checksum is right): the model check after download catches it
    config = json.loads(hub.repos["memoavatar/memo"]["image_proj/config.json"])
    config["clip_extra_context_tokens"] = 5
    hub.repos["memoavatar/memo"]["image_proj/config.json"] = json.dumps(config).encode()
    code, out = fetch(capsys, comfy, "--only", "core", "--yes")
    assert code == 1
    assert "MEMO image projection: the downloaded files do not load" in out and "shape mismatches" in out
    assert not (comfy / "models/memo/memo/image_proj").exists()


def test_asks_before_downloading(hub, comfy, capsys, monkeypatch):
    questions = []
    monkeypatch.setattr(builtins, "input", lambda q: questions.append(q) or "n")
    code, out = fetch(capsys, comfy, "--only", "vocals")
    assert code == 1 and questions == ["continue? [y/N] "] and "nothing downloaded" in out
    assert hub.gets() == [] and [m for m, *_ in hub.log] == ["HEAD"]
    assert f"{mf.format_size(len(hub.repos['memoavatar/memo']['misc/vocal_separator/Kim_Vocal_2.onnx']))}" in out
    monkeypatch.setattr(builtins, "input", lambda q: "y")
    code, out = fetch(capsys, comfy, "--only", "vocals")
    assert code == 0, out


def test_network_failure_is_one_line(hub, comfy, capsys, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    code, out = fetch(capsys, comfy, "--only", "core", "--yes")
    assert code == 1
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot get http://127.0.0.1:") and "proxy" in lines[0]
    assert files_under(comfy / "models") == set()


def test_endpoint_is_read_when_the_command_runs(hub, comfy, capsys, monkeypatch):
    """HF_ENDPOINT set after huggingface_hub was imported still applies (a mirror path prefix too)."""
    import memo_pipeline.model_fetch as fetcher

    monkeypatch.setenv("HF_ENDPOINT", hub.url + "/")
    assert fetcher.endpoint() == hub.url
    code, _ = fetch(capsys, comfy, "--only", "vocals", "--yes")
    assert code == 0 and all(path.startswith("/memoavatar/memo/resolve/main/") for _, path, _, _ in hub.log)


def test_already_complete_tree_needs_no_network(release, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing may be asked
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    shutil.copytree(release, comfy / "models")
    code, out = fetch(capsys, comfy, "--yes")
    assert code == 0 and "nothing to fetch" in out


def test_proxy_settings_are_honoured(hub, comfy, capsys, monkeypatch):
    """With HTTP_PROXY set, every request goes to the proxy (here the fake hub itself, on 127.0.0.1),
    naming a mirror host that is never resolved or contacted directly."""
    mirror = "http://mirror.example.invalid"
    monkeypatch.setenv("HF_ENDPOINT", mirror)
    monkeypatch.setenv("HTTP_PROXY", hub.url)
    monkeypatch.setenv("NO_PROXY", "")
    code, out = fetch(capsys, comfy, "--only", "vocals", "--yes")
    assert code == 0, out
    assert hub.log and all(path.startswith(f"{mirror}/memoavatar/memo/resolve/main/") for _, path, _, _ in hub.log)


# ------------------------------------------------------------------ faults: other disks, read-only folders, hostile servers

def test_a_model_folder_on_another_file_system_is_installed(hub, comfy, release, capsys, monkeypatch):
    """A rename from the staging folder into a folder on another disk fails with EXDEV (simulated for
    every rename between two different folders, as it would be through a symlink to another disk):
    the files are copied next to their place and renamed there."""
    import errno
    import os

    real_replace = os.replace
    crossed = []

    def replace(src, dst):
        if Path(src).parent != Path(dst).parent:
            crossed.append(dst)
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src), None, str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    code, out = fetch(capsys, comfy, "--only", "face", "--yes")
    assert code == 0, out
    assert crossed  # the cross-device path was taken
    models = comfy / "models"
    for local in planned(["face"]):
        assert (models / local).read_bytes() == (release / local).read_bytes()
    assert files_under(models) == set(planned(["face"]))  # no temporary or staged file left


def test_a_model_folder_really_on_another_file_system(hub, comfy, release, capsys, tmp_path):
    """The same with a real second file system when /dev/shm is one (a symlinked model folder)."""
    import os
    import tempfile

    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev or not os.access(shm, os.W_OK):
        pytest.skip("no second file system to link to")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        os.symlink(other, comfy / "models/memo")
        code, out = fetch(capsys, comfy, "--only", "vocals", "--yes")
        assert code == 0, out
        local = f"{mf.MEMO_DIR}/misc/vocal_separator/{mf.KIM_VOCAL_FILE}"
        assert (Path(other) / local.split("/", 1)[1]).read_bytes() == (release / local).read_bytes()


def test_a_read_only_models_folder_is_one_line_before_any_download(hub, comfy, capsys, monkeypatch):
    import errno

    models = comfy / "models"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.is_relative_to(models):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, out = fetch(capsys, comfy, "--only", "vocals", "--yes")
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 1, out
    assert "is on a read-only file system" in lines[0] and "nothing was downloaded" in lines[0]
    assert hub.log == []


def test_a_file_where_the_staging_folder_should_be_is_one_line(hub, comfy, capsys):
    (comfy / "models/.memo-fetch").write_text("in the way")
    code, out = fetch(capsys, comfy, "--only", "vocals", "--yes")
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "is a file where fetch keeps its downloads" in lines[0]


def test_installation_is_all_or_nothing_per_model(hub, comfy, capsys):
    """A folder where config.json should go: the new weights are not moved into place either."""
    models = comfy / "models"
    config = models / mf.MEMO_DIR / "image_proj/config.json"
    config.mkdir(parents=True)
    code, out = fetch(capsys, comfy, "--only", "core", "--yes")
    assert code == 1
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "MEMO image projection was not installed" in errors[0]
    assert "is a folder where the downloaded file should go" in errors[0]
    assert not (models / mf.MEMO_DIR / "image_proj/diffusion_pytorch_model.safetensors").exists()
    assert not [p for p in (models / mf.MEMO_DIR / "image_proj").iterdir() if p.name != "config.json"]
    config.rmdir()
    code, out = fetch(capsys, comfy, "--only", "core", "--yes")
    assert code == 0, out


def _timed_fetch(capsys, comfy, *args):
    import time

    started = time.monotonic()
    code, out = fetch(capsys, comfy, *args)
    return code, out, time.monotonic() - started


def test_a_server_that_sends_headers_then_nothing_gives_up_in_one_line(hub, comfy, capsys, monkeypatch, caplog):
    monkeypatch.setenv("MEMO_FETCH_READ_TIMEOUT", "1")
    hub.silent.add(f"misc/vocal_separator/{mf.KIM_VOCAL_FILE}")
    code, out, took = _timed_fetch(capsys, comfy, "--only", "vocals", "--yes")
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert code == 1 and took < 8
    assert len(errors) == 1 and "no data from the server for 1 s" in errors[0]
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # no retry warnings


def test_a_server_trickling_a_byte_at_a_time_hits_the_stall_limit(hub, comfy, capsys, monkeypatch):
    monkeypatch.setenv("MEMO_FETCH_READ_TIMEOUT", "5")
    monkeypatch.setenv("MEMO_FETCH_STALL_SECONDS", "1.5")
    name = f"misc/vocal_separator/{mf.KIM_VOCAL_FILE}"
    hub.trickle[name] = 0.2  # never 5 s without a byte, so the read timeout alone would wait forever
    code, out, took = _timed_fetch(capsys, comfy, "--only", "vocals", "--yes")
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert code == 1 and took < 8
    assert len(errors) == 1 and "stalled (the server sent only" in errors[0] and "what arrived is kept" in errors[0]
    part = comfy / "models/.memo-fetch" / mf.MEMO_DIR / "misc/vocal_separator" / (mf.KIM_VOCAL_FILE + ".part")
    assert 0 < part.stat().st_size < 20
    hub.trickle.clear()
    code, out = fetch(capsys, comfy, "--only", "vocals", "--yes")
    assert code == 0 and "resuming" in out, out


def test_bad_timeout_settings_are_one_line(hub, comfy, capsys, monkeypatch):
    monkeypatch.setenv("MEMO_FETCH_READ_TIMEOUT", "soon")
    code, out = fetch(capsys, comfy, "--only", "vocals", "--yes")
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith("error: MEMO_FETCH_READ_TIMEOUT='soon' is not a number of seconds above 0")
