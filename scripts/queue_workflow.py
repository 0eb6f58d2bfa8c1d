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
--jobs JOBS.csv|JOBS.jsonl   run once per row of a job manifest (a CSV file with a header on
    line 1, or JSON Lines): one column per NODE.INPUT, values as --set takes them (@FILE paths
    are relative to the manifest's folder), an optional `out` column naming the row's folder
    below OUT (default line-<N>). Every row is checked before anything is uploaded.
    --batch and --jobs end with a table (row, status, prompt id, seconds, outputs); a failed
    prompt does not stop the others.

Downloads never replace a file: an existing name gets " (1)", " (2)"... unless --overwrite.
Only the Python standard library is used, so it runs anywhere ComfyUI is reachable.
Exit codes: 0 ok, 1 workflow/node error (any row of a batch), 2 bad arguments, or a server that
cannot be reached or answers what ComfyUI would not (an HTML page, a malformed reply, silence).
"""
from __future__ import annotations

import argparse
import copy
import fnmatch
import http.client
import importlib.util
import json
import mimetypes
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SERVER = "http://127.0.0.1:8188"
HTTP_TIMEOUT = 30.0  # seconds of silence on one request before giving up (uploads included)
MAX_NESTING = 64  # input values deeper than this are no workflow ComfyUI would export
MANIFEST_MODULE = Path(__file__).resolve().parents[1] / "memo_pipeline" / "manifest.py"


class UsageError(Exception):
    """Bad command line or workflow file (exit code 2)."""


class ServerUnreachable(Exception):
    """No ComfyUI answered at the given address (exit code 2)."""


class BadServerAnswer(Exception):
    """The server answered, but not as ComfyUI does (HTML page, wrong JSON shape, silence) (exit code 2)."""


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
        value = json.loads(raw)
    except ValueError:
        return raw
    except RecursionError:
        raise UsageError(f"value nested too deeply: {raw[:40]}...") from None
    check_nesting(value, "value")
    return value


def check_nesting(value, where: str) -> None:
    """UsageError when `value` holds lists/dicts more than MAX_NESTING deep (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > MAX_NESTING:
                raise UsageError(f"{where} is nested more than {MAX_NESTING} levels deep")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


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
    return make_assignment(target.strip(), raw)


def make_assignment(target: str, raw, base: Path | None = None) -> Assignment:
    """NODE.INPUT and a --set value (a manifest cell: `base` is its folder for @FILE; non-strings as they are)."""
    node, name = parse_target(target)
    if not isinstance(raw, str):
        return Assignment(node, name, raw)
    if raw.startswith("@@"):
        return Assignment(node, name, raw[1:])
    if raw.startswith("@"):
        path = Path(raw[1:]).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
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
        check_nesting(node, f"node '{node_id}'")
    return data


def load_workflow(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise UsageError(f"cannot read workflow {path}: {e}") from None
    except ValueError as e:
        raise UsageError(f"workflow {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise UsageError(f"workflow {path} is nested too deeply to be a ComfyUI workflow") from None
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
    outputs = entry.get("outputs") or {}
    if not isinstance(outputs, dict):
        raise BadServerAnswer(f"the history entry's outputs are {type(outputs).__name__}, not a JSON object")
    files = []
    for node_id, ui in outputs.items():
        for key, items in (ui.items() if isinstance(ui, dict) else ()):
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and "filename" in item and item.get("type", "output") in types:
                    files.append({"filename": item["filename"], "subfolder": item.get("subfolder") or "",
                                  "type": item.get("type", "output"), "node_id": node_id, "key": key})
    return files


def plain_name(name, what: str = "name") -> str:
    """`name` if it is a plain file name: not empty, '.' or '..', no path separator or control character."""
    if (not isinstance(name, str) or name.strip() in ("", ".", "..") or "/" in name or "\\" in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        raise WorkflowFailed(f"refusing the unsafe {what} {name!r} (not a plain file name)")
    return name


def local_target(out_dir, fileinfo: dict) -> Path:
    """Where a downloaded file goes: OUT/<subfolder>/<filename>, never outside OUT, never OUT itself."""
    subfolder = fileinfo.get("subfolder") or ""
    if not isinstance(subfolder, str):
        raise WorkflowFailed(f"server listed an unsafe output path: subfolder {subfolder!r}")
    parts = [part for part in subfolder.replace("\\", "/").split("/") if part]
    try:
        parts = [plain_name(part, "output subfolder") for part in parts]
        name = plain_name(fileinfo.get("filename"), "output file name")
    except WorkflowFailed as e:
        raise WorkflowFailed(f"server listed an unsafe output path: {e}") from None
    if subfolder.startswith(("/", "\\")):
        raise WorkflowFailed(f"server listed an unsafe output path: {subfolder}/{name}")
    return Path(out_dir).joinpath(*parts, name)


def save_new_file(target: Path, data: bytes, overwrite: bool = False) -> Path:
    """Write `data` at `target`, or at 'name (1).ext', 'name (2).ext'... when that is taken (never
    replacing a file) unless `overwrite`; a failed write leaves nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if overwrite and not target.is_dir():
        temp = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            temp.write_bytes(data)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return target
    stem, suffix = (target.stem, target.suffix) if target.stem else (target.name, "")
    for n in range(10000):
        candidate = target if n == 0 else target.with_name(f"{stem} ({n}){suffix}")
        try:
            handle = open(candidate, "xb")  # fails when anything has the name: no race with another writer
        except FileExistsError:
            continue
        try:
            with handle:
                handle.write(data)
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise
        return candidate
    raise WorkflowFailed(f"no free name for {target} (tried 10000)")


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
    messages = status.get("messages")
    for item in messages if isinstance(messages, list) else []:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], dict)):
            continue
        event, data = item
        if event == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type')}: {str(data.get('exception_message', '')).strip()}")
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return "the prompt failed"


def describe_rejection(payload) -> str:
    if not isinstance(payload, dict):
        return snippet(payload)
    lines = []
    err = payload.get("error")
    if isinstance(err, dict):
        lines.append(f"{err.get('message', '')}: {err.get('details', '')}".strip(": "))
    elif isinstance(err, str) and err.strip():
        lines.append(err.strip())
    node_errors = payload.get("node_errors")
    for node_id, info in (node_errors.items() if isinstance(node_errors, dict) else ()):
        if not isinstance(info, dict):
            lines.append(f"  node {node_id}: {snippet(info)}")
            continue
        errors = info.get("errors")
        for e in errors if isinstance(errors, list) else []:
            if isinstance(e, dict):
                lines.append(f"  node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
            else:
                lines.append(f"  node {node_id} ({info.get('class_type')}): {snippet(e)}")
    return "\n".join(lines) or snippet(payload)


def snippet(value, limit: int = 300) -> str:
    """A short printable form of a server answer (JSON or text)."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value)
        except (ValueError, RecursionError):
            text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------------------ talking to ComfyUI

class ComfyHTTP:
    """The few ComfyUI routes the script uses; every answer's shape is checked before it is used, and
    no request waits more than `http_timeout` seconds for the server."""

    def __init__(self, server: str, timeout: float = 3600, poll: float = 0.5, log=print,
                 http_timeout: float = HTTP_TIMEOUT):
        self.server = server.rstrip("/")
        self.timeout = timeout
        self.poll = poll
        self.http_timeout = http_timeout
        self.client_id = uuid.uuid4().hex
        self.log = log

    def _call(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> tuple[int, bytes, str]:
        """(HTTP status, body, content type)."""
        headers = {"Content-Type": ctype} if ctype else {}
        req = urllib.request.Request(self.server + path, data=body, method=method, headers=headers)
        route = path.split("?")[0]
        try:
            try:
                with urllib.request.urlopen(req, timeout=self.http_timeout) as r:
                    return r.status, r.read(), r.headers.get_content_type()
            except urllib.error.HTTPError as e:
                with e:
                    return e.code, e.read(), e.headers.get_content_type()
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise self._silent(method, route) from None
            raise ServerUnreachable(f"cannot reach ComfyUI at {self.server} ({e.reason}); is it running? "
                                    "Start it with e.g. 'python main.py --listen 127.0.0.1 --port 8188'") from None
        except TimeoutError:
            raise self._silent(method, route) from None
        except (ConnectionError, http.client.HTTPException) as e:
            raise BadServerAnswer(f"the server at {self.server} broke off its answer to {method} {route} "
                                  f"({type(e).__name__}: {e})") from None
        except ValueError as e:  # a malformed --server address
            raise UsageError(f"bad --server address {self.server!r}: {e}") from None

    def _silent(self, method: str, route: str) -> BadServerAnswer:
        return BadServerAnswer(f"ComfyUI at {self.server} did not answer {method} {route} within "
                               f"{self.http_timeout:g} s (--http-timeout)")

    def _json(self, method: str, path: str, payload=None, body: bytes | None = None, ctype: str | None = None):
        """(HTTP status, parsed JSON body or None when empty); any other body is a BadServerAnswer."""
        if payload is not None:
            body, ctype = json.dumps(payload).encode(), "application/json"
        status, data, _ = self._call(method, path, body, ctype)
        if not data.strip():
            return status, None
        route = path.split("?")[0]
        try:
            return status, json.loads(data)
        except RecursionError:
            raise BadServerAnswer(f"the server at {self.server} answered {route} with JSON nested too deeply") from None
        except ValueError:
            text = data[:2000].decode("utf-8", errors="replace")
            html = "<html" in text.lower() or "<!doctype" in text.lower()
            what = "an HTML page (a proxy or login page in front of ComfyUI?)" if html else "something that is not JSON"
            raise BadServerAnswer(f"the server at {self.server} answered {method} {route} (HTTP {status}) with {what}, "
                                  f"not ComfyUI's JSON: {snippet(text, 120)}") from None

    def upload(self, path: Path, subfolder: str = "") -> str:
        try:
            content = path.read_bytes()
        except OSError as e:
            raise WorkflowFailed(f"cannot read {path}: {e.strerror or e}") from None
        body, ctype = multipart({"type": "input", "subfolder": subfolder, "overwrite": "false"},
                                "image", path.name, content)
        status, info = self._json("POST", "/upload/image", body=body, ctype=ctype)
        if status != 200:
            raise WorkflowFailed(f"upload of {path} failed: HTTP {status} {describe_rejection(info)}")
        name = info.get("name") if isinstance(info, dict) else None
        folder = info.get("subfolder") or "" if isinstance(info, dict) else ""
        if not isinstance(name, str) or not name.strip() or not isinstance(folder, str):
            raise BadServerAnswer(f"the server at {self.server} answered the upload of {path} without the file's "
                                  f"name (ComfyUI answers {{\"name\": ...}}): {snippet(info)}")
        name = f"{folder}/{name}" if folder else name
        self.log(f"uploaded {path} as {name}")
        return name

    def queue(self, prompt: dict) -> str:
        status, payload = self._json("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise WorkflowFailed(f"ComfyUI rejected the workflow (HTTP {status}):\n{describe_rejection(payload)}",
                                 payload)
        prompt_id = payload.get("prompt_id") if isinstance(payload, dict) else None
        if isinstance(prompt_id, (str, int)) and not isinstance(prompt_id, bool) and str(prompt_id).strip():
            return str(prompt_id)
        if isinstance(payload, dict) and payload.get("error"):
            raise WorkflowFailed(f"ComfyUI rejected the workflow:\n{describe_rejection(payload)}", payload)
        raise BadServerAnswer(f"the server at {self.server} accepted the prompt without a prompt id "
                              f"(ComfyUI answers {{\"prompt_id\": ...}}): {snippet(payload)}")

    def history_entry(self, prompt_id: str) -> dict | None:
        """The prompt's /history entry, None while it has none; a malformed answer stops the polling."""
        status, history = self._json("GET", "/history/" + urllib.parse.quote(prompt_id, safe=""))
        where = f"the server at {self.server} answered /history/{prompt_id}"
        if status != 200:
            raise BadServerAnswer(f"{where} with HTTP {status}: {snippet(history)}")
        if not isinstance(history, dict):
            raise BadServerAnswer(f"{where} with {type(history).__name__}, not a JSON object: {snippet(history)}")
        entry = history.get(prompt_id)
        if entry is None:
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("status") or {}, dict) \
                or not isinstance(entry.get("outputs") or {}, dict):
            raise BadServerAnswer(f"{where} with a malformed entry (needs status and outputs objects): "
                                  f"{snippet(entry)}")
        return entry

    def wait(self, prompt_id: str) -> dict:
        start = time.monotonic()
        next_note = start + 30
        while time.monotonic() - start < self.timeout:
            entry = self.history_entry(prompt_id)
            st = (entry or {}).get("status") or {}
            if entry and st.get("status_str") == "error":
                raise WorkflowFailed(describe_failure(st), st)
            if entry and st.get("completed") is True:
                return entry
            if time.monotonic() >= next_note:
                self.log(f"still running ({time.monotonic() - start:.0f}s)")
                next_note += 30
            time.sleep(self.poll)
        try:
            self._json("POST", "/interrupt", {})
        except (BadServerAnswer, ServerUnreachable):
            pass
        raise WorkflowFailed(f"prompt {prompt_id} did not finish within {self.timeout:.0f}s; interrupted it")

    def download(self, fileinfo: dict, out_dir, overwrite: bool = False) -> Path:
        target = local_target(out_dir, fileinfo)  # names checked before anything is fetched
        query = urllib.parse.urlencode({"filename": fileinfo["filename"], "subfolder": fileinfo.get("subfolder") or "",
                                        "type": fileinfo.get("type") or "output"})
        status, data, ctype = self._call("GET", "/view?" + query)
        if status != 200:
            raise WorkflowFailed(f"download of {fileinfo['filename']} failed: HTTP {status}")
        if ctype == "text/html" and target.suffix.lower() not in (".html", ".htm"):
            raise BadServerAnswer(f"the server at {self.server} answered the download of {fileinfo['filename']} with "
                                  "an HTML page (a proxy or login page in front of ComfyUI?); nothing saved")
        try:
            return save_new_file(target, data, overwrite)
        except OSError as e:
            raise WorkflowFailed(f"cannot save {target}: {e.strerror or e}") from None


@dataclass
class Job:
    """One prompt of a run: `label` names it in logs and the summary ('line 3', a file name)."""

    label: str
    assignments: list
    out_dir: Path


@dataclass
class JobResult:
    label: str
    status: str = "not run"  # ok, failed, interrupted, not run
    prompt_id: str = ""
    seconds: float | None = None
    outputs: list = field(default_factory=list)
    error: str = ""


def run_once(http: ComfyHTTP, workflow: dict, assignments, out_dir, allow_new_inputs=False,
             include_temp=False, download=True, overwrite=False, result: JobResult | None = None) -> list[Path]:
    """Upload, queue, wait and download one prompt; `result` (if given) learns the prompt id and files."""
    result = result if result is not None else JobResult("")
    check_assignments(workflow, assignments, allow_new_inputs)
    uploaded = {a.upload: http.upload(a.upload) for a in assignments if a.upload is not None}
    prompt = apply_assignments(workflow, assignments, uploaded, allow_new_inputs)
    result.prompt_id = http.queue(prompt)
    http.log(f"queued prompt {result.prompt_id}")
    entry = http.wait(result.prompt_id)
    files = output_files(entry, include_temp)
    if not download:
        return []
    for f in files:
        local_target(out_dir, f)  # every listed name is checked before the first download
    for f in files:
        result.outputs.append(http.download(f, out_dir, overwrite))
        http.log(f"saved {result.outputs[-1]}")
    if not files:
        http.log("the workflow finished but listed no output files")
    return list(result.outputs)


def run_jobs(http: ComfyHTTP, workflow: dict, jobs: list[Job], log, **common) -> tuple[list[JobResult], int]:
    """Every job in turn; a failed prompt does not stop the others, a broken server or Ctrl-C stops the
    rest (marked 'not run'). Returns the results and the exit code."""
    results = [JobResult(job.label) for job in jobs]
    code = 0
    for i, (job, result) in enumerate(zip(jobs, results), 1):
        log(f"[{i}/{len(jobs)}] {job.label}")
        start = time.monotonic()
        try:
            run_once(http, workflow, job.assignments, job.out_dir, result=result, **common)
            result.status = "ok"
        except WorkflowFailed as e:
            result.status, result.error = "failed", str(e).strip().splitlines()[0] if str(e).strip() else "failed"
            log(f"error: {job.label}: {e}")
            code = max(code, 1)
        except (UsageError, ServerUnreachable, BadServerAnswer) as e:
            result.status, result.error = "failed", str(e)
            log(f"error: {job.label}: {e}")
            log("stopping: the remaining rows are not run")
            code = 2
        except KeyboardInterrupt:
            result.status, result.error = "interrupted", "Ctrl-C"
            log("interrupted: the remaining rows are not run")
            code = 130
        finally:
            result.seconds = time.monotonic() - start
        if code >= 2:
            break
    return results, code


def summary_table(results: list[JobResult]) -> str:
    """Row, status, prompt id, seconds, outputs (or the error), as aligned text."""
    rows = [("row", "status", "prompt id", "seconds", "outputs")]
    for r in results:
        seconds = "" if r.seconds is None else f"{r.seconds:.1f}"
        shown = ", ".join(str(p) for p in r.outputs) or ("-" if r.status == "ok" else "")
        if r.error:
            shown = (shown + "; " if shown else "") + r.error
        rows.append((r.label, r.status, r.prompt_id or "-", seconds, shown))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join([*(cell.ljust(w) if i != 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))),
                        row[4]]).rstrip() for row in rows]
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "interrupted", "not run")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n or s in ("ok", "failed")))
    return "\n".join(lines)


# ------------------------------------------------------------------ job manifests

def manifest_module():
    """memo_pipeline/manifest.py loaded by path (standard library only), so the script needs no install."""
    name = "memo_queue_manifest"
    if name in sys.modules:
        return sys.modules[name]
    if not MANIFEST_MODULE.is_file():
        raise UsageError(f"--jobs reads manifests with {MANIFEST_MODULE}, which is missing; run the script from "
                         "the MEMO pack's folder")
    spec = importlib.util.spec_from_file_location(name, MANIFEST_MODULE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def row_folder(value) -> str:
    """The `out` column: a relative folder below --out, made of plain names."""
    text = str(value)
    if text.startswith(("/", "\\")) or (len(text) > 1 and text[1] == ":"):
        raise UsageError(f"out {text!r} must be a folder name relative to --out")
    try:
        parts = [plain_name(part, "out folder") for part in text.replace("\\", "/").split("/") if part]
    except WorkflowFailed as e:
        raise UsageError(str(e).replace("refusing the unsafe", "out: refusing the")) from None
    if not parts:
        raise UsageError(f"out {text!r} names no folder")
    return "/".join(parts)


def manifest_jobs(path, workflow: dict, common_sets: list, out_dir: Path, allow_new_inputs: bool = False) -> list[Job]:
    """One job per manifest row: columns NODE.INPUT (values as --set takes them) and an optional `out`.
    Every row is checked against the workflow first; all problems are reported together."""
    m = manifest_module()
    path = Path(path)
    try:
        manifest = m.read_manifest(path)
    except m.ManifestError as e:
        raise UsageError(str(e)) from None
    is_csv = m.manifest_format(path) == "csv"
    problems = []
    targets = {}
    for column in manifest.columns:
        first = 1 if is_csv else min(r.line for r in manifest.rows if column in r.values)
        if column == "out":
            continue
        try:
            parse_target(column)
            check_assignments(workflow, [Assignment(*parse_target(column), None)], allow_new_inputs)
            targets[column] = True
        except UsageError as e:
            problems.append(m.ManifestProblem(first, f"column {column!r}: {e}"))
    jobs = []
    base = path.parent
    for row in manifest.rows:
        folder = f"line-{row.line}"
        assignments = list(common_sets)
        reasons = []
        for column, value in row.values.items():
            try:
                if column == "out":
                    folder = row_folder(value)
                elif column in targets:
                    assignments.append(make_assignment(column, value, base))
            except UsageError as e:
                reasons.append(f"{column}: {e}" if column != "out" else str(e))
        if not reasons and len(assignments) == len(common_sets) and not problems:
            reasons.append("the row sets no NODE.INPUT column")
        if not reasons:
            try:
                check_assignments(workflow, assignments, allow_new_inputs)
            except UsageError as e:
                reasons.append(str(e))
        problems.extend(m.ManifestProblem(row.line, reason) for reason in reasons)
        jobs.append(Job(f"line {row.line}", assignments, out_dir / folder))
    if problems:
        raise UsageError(str(m.ManifestError(path, problems)) + "\nnothing was uploaded or queued")
    return jobs


# ------------------------------------------------------------------ command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workflow", help="API-format workflow JSON (Workflow > Export (API) in ComfyUI)")
    p.add_argument("--server", default=os.environ.get("COMFYUI_URL", DEFAULT_SERVER),
                   help=f"ComfyUI address (default $COMFYUI_URL or {DEFAULT_SERVER})")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="replace a node input; @FILE uploads FILE (repeatable)")
    runs = p.add_mutually_exclusive_group()
    runs.add_argument("--batch", metavar="NODE.INPUT=DIR", help="run once per file in DIR, uploaded into NODE.INPUT")
    runs.add_argument("--jobs", metavar="JOBS", help="run once per row of a job manifest (.csv with a header, "
                      "or .jsonl) whose columns are NODE.INPUT")
    p.add_argument("--pattern", default="*", help="file name filter for --batch (default '*')")
    p.add_argument("--out", default="comfy_outputs", help="folder for downloaded outputs (default comfy_outputs)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files of the same name in --out (default: save as 'name (1).ext')")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait per run (default 3600)")
    p.add_argument("--http-timeout", type=float, default=HTTP_TIMEOUT,
                   help=f"seconds a request (upload, queue, poll, download) may wait for the server (default {HTTP_TIMEOUT:g})")
    p.add_argument("--include-temp", action="store_true", help="also download temp/preview files")
    p.add_argument("--no-download", action="store_true", help="only queue and wait")
    p.add_argument("--allow-new-inputs", action="store_true", help="let --set add inputs the node does not list")
    p.add_argument("--print-prompt", action="store_true", help="print the final prompt JSON and exit (no server)")
    return p


def check_server(url: str) -> None:
    """--server must be an http(s) address with a host and a valid port: refused before anything is sent."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.port == 0:  # reading .port raises ValueError when it is out of range or not a number
            raise ValueError("port 0")
    except ValueError as e:
        raise UsageError(f"bad --server address {url!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"bad --server address {url!r}: give http://HOST:PORT, e.g. {DEFAULT_SERVER}")


def check_out_folder(out: Path) -> None:
    """--out must be a folder (or not exist yet, below a folder): refused before anything is uploaded."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is a file, not a folder")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if not (args.timeout > 0 and args.http_timeout > 0):
            raise UsageError("--timeout and --http-timeout must be positive numbers of seconds")
        workflow = load_workflow(args.workflow)
        assignments = [parse_assignment(s) for s in args.sets]
        check_assignments(workflow, assignments, args.allow_new_inputs)
        if args.print_prompt:
            if any(a.upload for a in assignments):
                raise UsageError("--print-prompt cannot upload files; use plain values")
            print(json.dumps(apply_assignments(workflow, assignments, {}, args.allow_new_inputs), indent=2))
            return 0
        check_server(args.server)
        out = Path(args.out)
        check_out_folder(out)
        common = dict(allow_new_inputs=args.allow_new_inputs, include_temp=args.include_temp,
                      download=not args.no_download, overwrite=args.overwrite)
        if args.jobs:
            jobs = manifest_jobs(args.jobs, workflow, assignments, out, args.allow_new_inputs)
        elif args.batch:
            target, eq, folder = args.batch.partition("=")
            if not eq:
                raise UsageError(f"expected --batch NODE.INPUT=DIR, got '{args.batch}'")
            node, name = parse_target(target)
            files = batch_files(folder, args.pattern)
            check_assignments(workflow, assignments + [Assignment(node, name, upload=files[0])], args.allow_new_inputs)
            jobs = [Job(path.name, assignments + [Assignment(node, name, upload=path)], out / path.stem)
                    for path in files]
        else:
            jobs = None
        http = ComfyHTTP(args.server, timeout=args.timeout, log=log, http_timeout=args.http_timeout)
        if jobs is None:
            run_once(http, workflow, assignments, out, **common)
            return 0
        results, code = run_jobs(http, workflow, jobs, log, **common)
        print(summary_table(results), flush=True)
        return code
    except (UsageError, ServerUnreachable, BadServerAnswer) as e:
        log(f"error: {e}")
        return 2
    except WorkflowFailed as e:
        log(f"error: {e}")
        if e.payload is not None:
            log("server response: " + snippet(e.payload, 20000))
        return 1
    except RecursionError:
        log("error: a value is nested too deeply to be part of a ComfyUI workflow")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
