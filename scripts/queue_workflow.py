#!/usr/bin/env python3
"""Queue an API-format ComfyUI workflow with your own files and download what it makes.

Examples (from the pack's folder; Portrait and Speech are node titles, 11 the sampler's id):
  python scripts/queue_workflow.py workflows/api/memo_talking_video_api.json \\
      --set Portrait.image=@portrait.png --set Speech.audio=@speech.wav --set 11.seed=7 --out results/
  python scripts/queue_workflow.py workflows/api/memo_talking_video_api.json \\
      --set Portrait.image=@portrait.png --batch Speech.audio=clips/ --pattern '*.wav' --out results/

Every --set and --batch target is checked against the workflow before anything is uploaded.

--set NODE.INPUT=VALUE   NODE is a node id (or a node's unique title); VALUE is
    @FILE     upload FILE to ComfyUI's input folder and use the name it returns
    @@text    the literal string "@text"
    JSON      42, 1.5, true, null, "quoted string", ["4", 0] (a link to node 4, output 0)
    other     taken as a plain string
--batch NODE.INPUT=DIR   run once per file in DIR (filtered by --pattern), uploading
    each file into NODE.INPUT; results go to OUT/<file stem>/.

Only the Python standard library is used, so it runs anywhere ComfyUI is reachable.
Exit codes: 0 ok, 1 workflow/node error, 2 cannot reach the server or bad arguments.
"""
from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import mimetypes
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SERVER = "http://127.0.0.1:8188"


class UsageError(Exception):
    """Bad command line or workflow file (exit code 2)."""


class ServerUnreachable(Exception):
    """No ComfyUI answered at the given address (exit code 2)."""


class WorkflowFailed(Exception):
    """ComfyUI rejected or failed the prompt; `payload` is its error JSON (exit code 1)."""

    def __init__(self, message: str, payload=None):
        super().__init__(message)
        self.payload = payload


# ------------------------------------------------------------------ parsing

@dataclass(frozen=True)
class Assignment:
    node: str
    input: str
    value: object = None
    upload: Path | None = None  # set when the value is a file to upload


def parse_value(raw: str):
    """JSON when it parses (numbers, booleans, lists for links), else the plain string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_target(text: str) -> tuple[str, str]:
    """'12.image' -> ('12', 'image'); node ids may themselves contain dots or colons."""
    node, dot, name = text.rpartition(".")
    if not dot or not node or not name:
        raise UsageError(f"expected NODE.INPUT, got '{text}'")
    return node, name


def parse_assignment(text: str) -> Assignment:
    target, eq, raw = text.partition("=")
    if not eq:
        raise UsageError(f"expected NODE.INPUT=VALUE, got '{text}'")
    node, name = parse_target(target.strip())
    if raw.startswith("@@"):
        return Assignment(node, name, raw[1:])
    if raw.startswith("@"):
        path = Path(raw[1:]).expanduser()
        if not path.is_file():
            raise UsageError(f"file to upload not found: {path}")
        return Assignment(node, name, upload=path)
    return Assignment(node, name, parse_value(raw))


def normalize_workflow(data) -> dict:
    """Return the API-format prompt dict, explaining the usual mistakes."""
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise UsageError("this is an editor (UI) workflow; in ComfyUI use Workflow > Export (API) "
                         "and pass that file instead")
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if not isinstance(data, dict) or not data:
        raise UsageError("workflow must be a JSON object mapping node ids to nodes")
    for node_id, node in data.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs"), dict):
            raise UsageError(f"node '{node_id}' is not an API-format node (needs class_type and inputs)")
    return data


def load_workflow(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise UsageError(f"cannot read workflow {path}: {e}") from None
    except ValueError as e:
        raise UsageError(f"workflow {path} is not valid JSON: {e}") from None
    return normalize_workflow(data)


def find_node(workflow: dict, ref: str) -> str:
    """Node id for `ref`: an id, else a unique _meta.title."""
    if ref in workflow:
        return ref
    titled = [nid for nid, node in workflow.items() if (node.get("_meta") or {}).get("title") == ref]
    if len(titled) == 1:
        return titled[0]
    if len(titled) > 1:
        raise UsageError(f"title '{ref}' matches several nodes ({', '.join(titled)}); use a node id")
    listing = ", ".join(f"{nid} ({n['class_type']})" for nid, n in workflow.items())
    raise UsageError(f"no node '{ref}' in the workflow; nodes: {listing}")


def apply_assignments(workflow: dict, assignments, uploaded: dict | None = None,
                      allow_new_inputs: bool = False) -> dict:
    """Copy of `workflow` with each assignment applied; uploads take their server names."""
    uploaded = uploaded or {}
    out = copy.deepcopy(workflow)
    for a in assignments:
        node_id = find_node(out, a.node)
        inputs = out[node_id]["inputs"]
        if a.input not in inputs and not allow_new_inputs:
            raise UsageError(f"node {node_id} ({out[node_id]['class_type']}) has no input '{a.input}'; "
                             f"inputs: {', '.join(inputs) or 'none'} (--allow-new-inputs to add one)")
        if a.upload is not None:
            if a.upload not in uploaded:
                raise UsageError(f"{a.upload} was not uploaded")
            inputs[a.input] = uploaded[a.upload]
        else:
            inputs[a.input] = a.value
    return out


def check_assignments(workflow: dict, assignments, allow_new_inputs: bool = False) -> None:
    """UsageError unless every assignment names an existing node and input (and no upload replaces
    a link): run before uploading anything, so a typo costs no upload."""
    for a in assignments:
        node_id = find_node(workflow, a.node)
        current = workflow[node_id]["inputs"].get(a.input)
        if a.upload is not None and isinstance(current, list):
            raise UsageError(f"node {node_id} ({workflow[node_id]['class_type']}) input '{a.input}' is a link to node "
                             f"{current[0]}; a file goes into a loader's input (e.g. LoadImage.image, LoadAudio.audio)")
    apply_assignments(workflow, assignments, {a.upload: "" for a in assignments if a.upload is not None},
                      allow_new_inputs)


def output_files(entry: dict, include_temp: bool = False) -> list[dict]:
    """Files listed in a /history entry's outputs (every node, every ui key)."""
    types = {"output", "temp"} if include_temp else {"output"}
    files = []
    for node_id, ui in (entry.get("outputs") or {}).items():
        for key, items in (ui or {}).items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and item.get("filename") and item.get("type", "output") in types:
                    files.append({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                  "type": item.get("type", "output"), "node_id": node_id, "key": key})
    return files


def local_target(out_dir, fileinfo: dict) -> Path:
    """Where a downloaded file goes: OUT/<subfolder>/<filename>, never outside OUT."""
    rel = Path(fileinfo.get("subfolder") or "") / fileinfo["filename"]
    if rel.is_absolute() or ".." in rel.parts:
        raise WorkflowFailed(f"server listed an unsafe output path: {rel}")
    return Path(out_dir) / rel


def batch_files(folder, pattern: str = "*") -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--batch folder not found: {folder}")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and fnmatch.fnmatch(p.name, pattern))
    if not files:
        raise UsageError(f"no files matching '{pattern}' in {folder}")
    return files


def multipart(fields: dict, file_field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """multipart/form-data body and its Content-Type, as /upload/image expects."""
    boundary = "memo-" + uuid.uuid4().hex
    ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    chunks = []
    for key, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                  f'filename="{safe_name}"\r\nContent-Type: {ctype}\r\n\r\n'.encode())
    chunks.append(data)
    chunks.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def describe_failure(status: dict) -> str:
    for event, data in status.get("messages") or []:
        if event == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type')}: {str(data.get('exception_message', '')).strip()}")
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return "the prompt failed"


def describe_rejection(payload) -> str:
    if not isinstance(payload, dict):
        return str(payload)
    lines = []
    err = payload.get("error")
    if isinstance(err, dict):
        lines.append(f"{err.get('message', '')}: {err.get('details', '')}".strip(": "))
    for node_id, info in (payload.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            lines.append(f"  node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(lines) or json.dumps(payload)


# ------------------------------------------------------------------ talking to ComfyUI

class ComfyHTTP:
    def __init__(self, server: str, timeout: float = 3600, poll: float = 0.5, log=print):
        self.server = server.rstrip("/")
        self.timeout = timeout
        self.poll = poll
        self.client_id = uuid.uuid4().hex
        self.log = log

    def _call(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
              timeout: float = 60) -> tuple[int, bytes]:
        headers = {"Content-Type": ctype} if ctype else {}
        req = urllib.request.Request(self.server + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise ServerUnreachable(f"cannot reach ComfyUI at {self.server} ({reason}); is it running? "
                                    "Start it with e.g. 'python main.py --listen 127.0.0.1 --port 8188'") from None

    def _json(self, method: str, path: str, payload=None):
        body = None if payload is None else json.dumps(payload).encode()
        status, data = self._call(method, path, body, "application/json" if body is not None else None)
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data.decode(errors="replace")
        return status, parsed

    def upload(self, path: Path, subfolder: str = "") -> str:
        body, ctype = multipart({"type": "input", "subfolder": subfolder, "overwrite": "false"},
                                "image", path.name, path.read_bytes())
        status, data = self._call("POST", "/upload/image", body, ctype, timeout=600)
        if status != 200:
            raise WorkflowFailed(f"upload of {path} failed: HTTP {status} {data[:300]!r}")
        info = json.loads(data)
        name = f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]
        self.log(f"uploaded {path} as {name}")
        return name

    def queue(self, prompt: dict) -> str:
        status, payload = self._json("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise WorkflowFailed(f"ComfyUI rejected the workflow (HTTP {status}):\n{describe_rejection(payload)}",
                                 payload)
        return payload["prompt_id"]

    def wait(self, prompt_id: str) -> dict:
        start = time.monotonic()
        next_note = start + 30
        while time.monotonic() - start < self.timeout:
            status, history = self._json("GET", f"/history/{prompt_id}")
            entry = history.get(prompt_id) if status == 200 and isinstance(history, dict) else None
            st = (entry or {}).get("status") or {}
            if entry and st.get("status_str") == "error":
                raise WorkflowFailed(describe_failure(st), st)
            if entry and st.get("completed"):
                return entry
            if time.monotonic() >= next_note:
                self.log(f"still running ({time.monotonic() - start:.0f}s)")
                next_note += 30
            time.sleep(self.poll)
        self._json("POST", "/interrupt", {})
        raise WorkflowFailed(f"prompt {prompt_id} did not finish within {self.timeout:.0f}s; interrupted it")

    def download(self, fileinfo: dict, out_dir) -> Path:
        query = urllib.parse.urlencode({k: fileinfo[k] for k in ("filename", "subfolder", "type")})
        status, data = self._call("GET", "/view?" + query, timeout=600)
        if status != 200:
            raise WorkflowFailed(f"download of {fileinfo['filename']} failed: HTTP {status}")
        target = local_target(out_dir, fileinfo)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target


def run_once(http: ComfyHTTP, workflow: dict, assignments, out_dir, allow_new_inputs=False,
             include_temp=False, download=True) -> list[Path]:
    check_assignments(workflow, assignments, allow_new_inputs)
    uploaded = {a.upload: http.upload(a.upload) for a in assignments if a.upload is not None}
    prompt = apply_assignments(workflow, assignments, uploaded, allow_new_inputs)
    prompt_id = http.queue(prompt)
    http.log(f"queued prompt {prompt_id}")
    entry = http.wait(prompt_id)
    files = output_files(entry, include_temp)
    if not download:
        return []
    saved = [http.download(f, out_dir) for f in files]
    for path in saved:
        http.log(f"saved {path}")
    if not saved:
        http.log("the workflow finished but listed no output files")
    return saved


# ------------------------------------------------------------------ command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workflow", help="API-format workflow JSON (Workflow > Export (API) in ComfyUI)")
    p.add_argument("--server", default=os.environ.get("COMFYUI_URL", DEFAULT_SERVER),
                   help=f"ComfyUI address (default $COMFYUI_URL or {DEFAULT_SERVER})")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="replace a node input; @FILE uploads FILE (repeatable)")
    p.add_argument("--batch", metavar="NODE.INPUT=DIR", help="run once per file in DIR, uploaded into NODE.INPUT")
    p.add_argument("--pattern", default="*", help="file name filter for --batch (default '*')")
    p.add_argument("--out", default="comfy_outputs", help="folder for downloaded outputs (default comfy_outputs)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait per run (default 3600)")
    p.add_argument("--include-temp", action="store_true", help="also download temp/preview files")
    p.add_argument("--no-download", action="store_true", help="only queue and wait")
    p.add_argument("--allow-new-inputs", action="store_true", help="let --set add inputs the node does not list")
    p.add_argument("--print-prompt", action="store_true", help="print the final prompt JSON and exit (no server)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        workflow = load_workflow(args.workflow)
        assignments = [parse_assignment(s) for s in args.sets]
        check_assignments(workflow, assignments, args.allow_new_inputs)
        if args.print_prompt:
            if any(a.upload for a in assignments):
                raise UsageError("--print-prompt cannot upload files; use plain values")
            print(json.dumps(apply_assignments(workflow, assignments, {}, args.allow_new_inputs), indent=2))
            return 0
        http = ComfyHTTP(args.server, timeout=args.timeout, log=log)
        common = dict(allow_new_inputs=args.allow_new_inputs, include_temp=args.include_temp,
                      download=not args.no_download)
        if not args.batch:
            run_once(http, workflow, assignments, args.out, **common)
            return 0
        target, eq, folder = args.batch.partition("=")
        if not eq:
            raise UsageError(f"expected --batch NODE.INPUT=DIR, got '{args.batch}'")
        node, name = parse_target(target)
        files = batch_files(folder, args.pattern)
        check_assignments(workflow, assignments + [Assignment(node, name, upload=files[0])], args.allow_new_inputs)
        failures = 0
        for i, path in enumerate(files, 1):
            log(f"[{i}/{len(files)}] {path.name}")
            try:
                run_once(http, workflow, assignments + [Assignment(node, name, upload=path)],
                         Path(args.out) / path.stem, **common)
            except WorkflowFailed as e:
                failures += 1
                log(f"error: {path.name}: {e}")
        log(f"batch done: {len(files) - failures} ok, {failures} failed")
        return 1 if failures else 0
    except UsageError as e:
        log(f"error: {e}")
        return 2
    except ServerUnreachable as e:
        log(f"error: {e}")
        return 2
    except WorkflowFailed as e:
        log(f"error: {e}")
        if e.payload is not None:
            log("server response:\n" + json.dumps(e.payload, indent=2)[:20000])
        return 1


if __name__ == "__main__":
    sys.exit(main())
