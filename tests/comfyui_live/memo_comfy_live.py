"""Start a real ComfyUI on 127.0.0.1 and talk to it, for comfyui-memo's live tests.

Configuration (environment):
  COMFYUI_PATH           ComfyUI checkout (main.py, comfy/). Unset -> live tests skip;
                         set but unusable (no ComfyUI there, no Python for it) -> they fail.
  COMFYUI_PYTHON         its interpreter; default COMFYUI_PATH/venv/bin/python, then
                         COMFYUI_PATH/../venv/bin/python (scripts/setup_comfyui.sh makes the first).
  COMFYUI_START_TIMEOUT  seconds to wait for the server (default 240).
  COMFYUI_EXTRA_ARGS     extra main.py arguments, e.g. "--extra-model-paths-config /x.yaml".
  COMFYUI_LINK_PACK      "0" to run the core server without this pack (default: the repo
                         is linked into custom_nodes).

Tests for our own nodes need only a few lines, e.g.
    def test_memo_nodes_register(comfy):
        assert comfy.server.pack_linked and comfy.import_failures() == {}
        assert {"MemoSampler", "MemoModelLoader"} <= comfy.pack_node_names()
    entry = comfy.queue_and_wait(prompt)            # node errors raise ComfyError
    data = comfy.fetch(comfy.output_files(entry)[0])

Everything the server writes (input/output/temp/user, the custom_nodes link, its log)
goes into a pytest temp folder, never into the checkout. Only the standard library is
used so the tests run in the project's environment, not ComfyUI's.
"""
from __future__ import annotations

import json
import mimetypes
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "comfyui-memo"


class ComfyError(AssertionError):
    """ComfyUI rejected or failed a prompt; `payload` is the server's error JSON."""

    def __init__(self, message: str, payload=None):
        super().__init__(message)
        self.payload = payload


# ------------------------------------------------------------------ locating ComfyUI

def comfyui_path() -> Path | None:
    value = os.environ.get("COMFYUI_PATH", "").strip()
    return Path(value).expanduser().resolve() if value else None


def comfyui_python(comfy_dir: Path) -> Path | None:
    explicit = os.environ.get("COMFYUI_PYTHON", "").strip()
    if explicit:
        return Path(explicit)
    for cand in (comfy_dir / "venv" / "bin" / "python", comfy_dir.parent / "venv" / "bin" / "python"):
        if cand.exists():
            return cand
    return None


class BrokenComfyUI(RuntimeError):
    """COMFYUI_PATH is set but does not name a usable ComfyUI: the live tests must fail, not skip."""


def comfyui_problem() -> str | None:
    """What is wrong with the configured ComfyUI (None when it looks usable or none is configured)."""
    comfy = comfyui_path()
    if comfy is None:
        return None
    if not (comfy / "main.py").is_file() or not (comfy / "comfy").is_dir():
        return f"COMFYUI_PATH={comfy} does not contain ComfyUI (no main.py / comfy/)"
    py = comfyui_python(comfy)
    if py is None or not py.exists():
        return (f"no Python for the ComfyUI at COMFYUI_PATH={comfy}: set COMFYUI_PYTHON or create "
                f"{comfy}/venv (scripts/setup_comfyui.sh does)")
    return None


def why_no_comfyui() -> str | None:
    """Reason the live tests are skipped here (no ComfyUI configured), or None when they run.
    Raises BrokenComfyUI when COMFYUI_PATH is set but unusable: that is a failure, never a skip."""
    if comfyui_path() is None:
        return "COMFYUI_PATH is not set (run scripts/setup_comfyui.sh DIR, then COMFYUI_PATH=DIR)"
    problem = comfyui_problem()
    if problem:
        raise BrokenComfyUI(problem)
    return None


def skip_module_unless_comfyui() -> None:
    """Module-level skip for live test files when COMFYUI_PATH is unset. A COMFYUI_PATH that is
    set but unusable is a failure: whoever set it wanted these tests to run."""
    if comfyui_path() is None:
        pytest.skip(f"live ComfyUI tests skipped: {why_no_comfyui()}", allow_module_level=True)
    problem = comfyui_problem()
    if problem:
        pytest.fail(f"live ComfyUI tests cannot run: {problem}", pytrace=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ the server process

class ComfyServer:
    """One ComfyUI process on 127.0.0.1 with its own base folder."""

    def __init__(self, base_dir: Path, comfy_dir: Path | None = None, python: Path | None = None,
                 link_pack: bool | None = None):
        self.comfy_dir = comfy_dir or comfyui_path()
        self.python = python or comfyui_python(self.comfy_dir)
        self.base = Path(base_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "comfyui.log"
        self.proc: subprocess.Popen | None = None
        if link_pack is None:
            link_pack = os.environ.get("COMFYUI_LINK_PACK", "1") != "0"
        self.pack_linked = bool(link_pack)

    def dirs(self) -> dict[str, Path]:
        return {k: self.base / k for k in ("input", "output", "temp", "user", "custom_nodes", "models")}

    def command(self) -> list[str]:
        d = self.dirs()
        cmd = [str(self.python), str(self.comfy_dir / "main.py"), "--cpu",
               "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base),
               "--input-directory", str(d["input"]), "--output-directory", str(d["output"]),
               "--temp-directory", str(d["temp"]), "--user-directory", str(d["user"]),
               "--database-url", "sqlite:///:memory:", "--disable-api-nodes"]
        return cmd + shlex.split(os.environ.get("COMFYUI_EXTRA_ARGS", ""))

    def start(self, timeout: float | None = None) -> "ComfyServer":
        for path in self.dirs().values():
            path.mkdir(parents=True, exist_ok=True)
        if self.pack_linked:
            link = self.dirs()["custom_nodes"] / PACK_DIR_NAME
            if not link.exists():
                link.symlink_to(REPO_ROOT, target_is_directory=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONUNBUFFERED"] = "1"
        timeout = timeout or float(os.environ.get("COMFYUI_START_TIMEOUT", "240"))
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), cwd=self.base, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode} while starting:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer on {self.url} within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_failures(self) -> dict[str, str]:
        """Custom-node or core-extra modules that failed to import -> error text from the log."""
        text = self.log_text()
        failures: dict[str, str] = {}
        for m in re.finditer(r"IMPORT FAILED\)?: (.+)", text):
            failures.setdefault(m.group(1).strip(), "")
        for m in re.finditer(r"Cannot import (.+?) module for custom nodes: (.*)", text):
            failures[m.group(1).strip()] = m.group(2).strip()
        return failures


# ------------------------------------------------------------------ HTTP client

class ComfyClient:
    """Small urllib client for the ComfyUI HTTP API (/prompt, /history, /view, /upload)."""

    def __init__(self, url: str, server: ComfyServer | None = None):
        self.url = url.rstrip("/")
        self.server = server
        self.client_id = uuid.uuid4().hex
        self._object_info = None

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict | None = None, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str, timeout: float = 30):
        status, data = self._request("GET", path, timeout=timeout)
        if status != 200:
            raise ComfyError(f"GET {path} -> HTTP {status}: {data[:500]!r}")
        return json.loads(data)

    def post_json(self, path: str, payload) -> tuple[int, object]:
        status, data = self._request("POST", path, json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
        try:
            return status, json.loads(data) if data else None
        except json.JSONDecodeError:
            return status, data.decode(errors="replace")

    # ---- node registry
    def object_info(self, refresh: bool = False) -> dict:
        if self._object_info is None or refresh:
            self._object_info = self.get_json("/object_info", timeout=120)
        return self._object_info

    def node_names(self) -> set[str]:
        return set(self.object_info())

    def pack_node_names(self, pack_dir_name: str = PACK_DIR_NAME) -> set[str]:
        """Nodes that ComfyUI loaded from custom_nodes/<pack_dir_name>."""
        module = f"custom_nodes.{pack_dir_name}"
        return {name for name, info in self.object_info().items() if info.get("python_module") == module}

    def node_info(self, name: str) -> dict:
        return self.get_json("/object_info/" + urllib.parse.quote(name))[name]

    def import_failures(self) -> dict[str, str]:
        return self.server.import_failures() if self.server else {}

    # ---- files
    def upload_file(self, path, kind: str = "input", subfolder: str = "", overwrite: bool = True) -> str:
        """Upload any file through POST /upload/image; returns the name to put in a node input."""
        path = Path(path)
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        fields = {"type": kind, "subfolder": subfolder, "overwrite": "true" if overwrite else "false"}
        parts = []
        for key, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                     f'filename="{path.name}"\r\nContent-Type: {ctype}\r\n\r\n'.encode())
        parts.append(path.read_bytes())
        parts.append(f"\r\n--{boundary}--\r\n".encode())
        status, data = self._request("POST", "/upload/image", b"".join(parts),
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise ComfyError(f"upload of {path} failed: HTTP {status}: {data[:300]!r}")
        info = json.loads(data)
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    @staticmethod
    def output_files(entry: dict, types=("output",)) -> list[dict]:
        """Every file a history entry lists (any ui key), with its node id and ui key."""
        found = []
        for node_id, ui in (entry.get("outputs") or {}).items():
            for key, items in ui.items():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and "filename" in item and item.get("type", "output") in types:
                        found.append({**item, "node_id": node_id, "key": key})
        return found

    def fetch(self, fileinfo: dict) -> bytes:
        query = urllib.parse.urlencode({"filename": fileinfo["filename"],
                                        "subfolder": fileinfo.get("subfolder", ""),
                                        "type": fileinfo.get("type", "output")})
        status, data = self._request("GET", "/view?" + query, timeout=120)
        if status != 200:
            raise ComfyError(f"/view {query} -> HTTP {status}")
        return data

    def local_path(self, fileinfo: dict) -> Path:
        """Where a listed file lies on disk (only for a server this harness started)."""
        root = self.server.dirs()[fileinfo.get("type", "output")]
        return root / fileinfo.get("subfolder", "") / fileinfo["filename"]

    # ---- prompts
    def queue(self, prompt: dict) -> str:
        status, payload = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise ComfyError(f"ComfyUI rejected the prompt (HTTP {status}):\n"
                             f"{json.dumps(payload, indent=1)[:4000]}", payload)
        return payload["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """Poll /history until the prompt finishes; raise ComfyError with the node's error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            status = (entry or {}).get("status") or {}
            if entry and (status.get("completed") or status.get("status_str") == "error"):
                if status.get("status_str") == "error":
                    raise ComfyError(self._describe_failure(status), status)
                return entry
            time.sleep(0.25)
        self.post_json("/interrupt", {})
        self.post_json("/queue", {"delete": [prompt_id]})
        tail = self.server.log_tail() if self.server else ""
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f}s\n{tail}")

    @staticmethod
    def _describe_failure(status: dict) -> str:
        for event, data in status.get("messages", []):
            if event == "execution_error":
                tb = "".join(data.get("traceback", [])[-3:])
                return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                        f"{data.get('exception_type')}: {data.get('exception_message', '').strip()}\n{tb}")
            if event == "execution_interrupted":
                return f"prompt interrupted at node {data.get('node_id')}"
        return f"prompt failed: {json.dumps(status)[:2000]}"

    def queue_and_wait(self, prompt: dict, timeout: float = 300) -> dict:
        return self.wait(self.queue(prompt), timeout)


SD_VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
                     layers_per_block=2, norm_num_groups=32, down_block_types=["DownEncoderBlock2D"] * 4,
                     up_block_types=["UpDecoderBlock2D"] * 4, sample_size=512)
"""An AutoencoderKL of sd-vae-ft-mse's architecture (random weights), for probes of ComfyUI's VAE."""

PACK_PROBE_PREAMBLE = r'''
import importlib.util, json, os, sys
comfy_dir, repo, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.argv = [sys.argv[0]]
sys.path.insert(0, comfy_dir)
from comfy.cli_args import args
args.cpu = True
import torch, comfy.sd
spec = importlib.util.spec_from_file_location("memo_probe_pack", os.path.join(repo, "__init__.py"),
                                              submodule_search_locations=[repo])
pack = importlib.util.module_from_spec(spec); sys.modules["memo_probe_pack"] = pack; spec.loader.exec_module(pack)
'''
"""What a pack probe starts with: ComfyUI on the CPU, the pack imported as `memo_probe_pack`,
`config` from the probe's JSON argument."""


def run_pack_probe(body: str, config, cwd, timeout: int = 600) -> dict:
    """Run `PACK_PROBE_PREAMBLE` + `body` in ComfyUI's Python; `body` prints one line
    `PROBE <json>`, which is returned (a failed probe fails the test with its output)."""
    comfy_dir = comfyui_path()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(comfyui_python(comfy_dir)), "-c", PACK_PROBE_PREAMBLE + body, str(comfy_dir),
                           str(REPO_ROOT), json.dumps(config)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, f"probe failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("PROBE "):])
