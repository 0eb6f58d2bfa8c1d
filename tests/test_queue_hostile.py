"""scripts/queue_workflow.py against a local stand-in ComfyUI on 127.0.0.1 that can misbehave: answers
that are HTML pages or malformed JSON, silence, downloads that would overwrite files or escape the
output folder, and job manifests (--jobs). Every bad answer must end in one clear line and a non-zero
exit, never a traceback or a hang (issue 23 points 5 and 14, issue 21 point 6).

The server's handlers never loop: a "hanging" route waits at most a few seconds on an event that the
fixture sets at teardown, so nothing outlives the test."""
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support import load_module

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "queue_workflow.py"
MANIFEST = SCRIPT.parents[1] / "memo_pipeline" / "manifest.py"
qw = load_module("memo_queue_workflow", SCRIPT)

WORKFLOW = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "model": ["4", 0]}},
    "7": {"class_type": "LoadAudio", "inputs": {"audio": "old.wav"}, "_meta": {"title": "Speech"}},
    "12": {"class_type": "LoadImage", "inputs": {"image": "old.png"}, "_meta": {"title": "Portrait"}},
    "20": {"class_type": "SaveVideo", "inputs": {"filename_prefix": "memo/clip", "video": ["12", 0]}},
}
HANG_LIMIT_S = 10.0  # the longest any stand-in handler waits before answering anyway


class FakeComfy:
    """ComfyUI's upload, prompt, history, view and interrupt routes with scripted answers.

    `routes["POST /prompt"] = fn(body) -> (status, content_type, bytes)` replaces one route; the
    defaults behave like ComfyUI. Every request is recorded in `requests` as (method, path, body)."""

    def __init__(self):
        self.requests, self.prompts, self.routes = [], [], {}
        self.release = threading.Event()
        self.outputs = [{"filename": "clip_00001_.mp4", "subfolder": "memo", "type": "output"}]
        self.failing_seeds = set()  # prompts with these KSampler seeds fail like a node error
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path
                fake.requests.append((method, path, body))
                route = f"{method} {urllib.parse.urlsplit(path).path}"
                handler = (fake.routes.get(route) or fake.routes.get(route.rsplit("/", 1)[0] + "/*")
                           or getattr(fake, "default_" + method.lower()))
                answer = handler(path, body)
                if answer is None:  # the handler wrote (or refused to write) the answer itself
                    return
                status, ctype, data = answer
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the script gave up on this request (a timeout, a stop): its side is what is tested

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

        self.handler_class = Handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -------- ComfyUI-like defaults
    def default_post(self, path, body):
        route = urllib.parse.urlsplit(path).path
        if route == "/upload/image":
            name = body.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
            return ok({"name": name, "subfolder": "", "type": "input"})
        if route == "/prompt":
            prompt = json.loads(body)["prompt"]
            self.prompts.append(prompt)
            return ok({"prompt_id": f"p{len(self.prompts)}", "number": len(self.prompts), "node_errors": {}})
        if route == "/interrupt":
            return ok({})
        return 404, "text/plain", b"no such route"

    def default_get(self, path, body):
        parts = urllib.parse.urlsplit(path)
        if parts.path.startswith("/history/"):
            prompt_id = urllib.parse.unquote(parts.path.rsplit("/", 1)[1])
            prompt = self.prompts[int(prompt_id[1:]) - 1]
            if prompt["3"]["inputs"]["seed"] in self.failing_seeds:
                status = {"status_str": "error", "completed": False, "messages": [
                    ["execution_error", {"node_id": "3", "node_type": "KSampler", "exception_type": "RuntimeError",
                                         "exception_message": "seed refused"}]]}
                return ok({prompt_id: {"status": status, "outputs": {}}})
            return ok({prompt_id: {"status": {"status_str": "success", "completed": True},
                                   "outputs": {"20": {"images": list(self.outputs)}}}})
        if parts.path == "/view":
            query = urllib.parse.parse_qs(parts.query)
            return 200, "video/mp4", f"DATA {query['filename'][0]} {len(self.requests)}".encode()
        return 404, "text/plain", b"no such route"

    def hang(self, path, body):
        self.release.wait(HANG_LIMIT_S)  # bounded: answers (late) on its own
        return ok({"name": "late.png"})


def ok(payload, status=200):
    return status, "application/json", json.dumps(payload).encode()


def html(path, body):
    return 200, "text/html", b"<!DOCTYPE html><html><body><form>Sign in to continue</form></body></html>"


@pytest.fixture
def comfy():
    server = FakeComfy()
    yield server
    server.close()


@pytest.fixture
def files(tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(WORKFLOW))
    (tmp_path / "me.png").write_bytes(b"portrait")
    (tmp_path / "hi.wav").write_bytes(b"speech")
    return tmp_path


def run(comfy, files, *extra, timeout="3600"):
    argv = [str(files / "wf.json"), "--server", comfy.url, "--set", f"Portrait.image=@{files / 'me.png'}",
            "--out", str(files / "out"), "--timeout", timeout, "--http-timeout", "0.5", *extra]
    start = time.monotonic()
    code = qw.main(argv)
    return code, time.monotonic() - start


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- point 14: hostile answers

HOSTILE = {
    "html page for /prompt": ({"POST /prompt": html}, 2, "an HTML page (a proxy or login page"),
    "html page for the upload": ({"POST /upload/image": html}, 2, "an HTML page"),
    "html page with an error status": ({"POST /prompt": lambda p, b: (502, "text/html", b"<html>Bad Gateway</html>")},
                                       2, "HTTP 502) with an HTML page"),
    "no prompt id": ({"POST /prompt": lambda p, b: ok({"number": 1})}, 2, "without a prompt id"),
    "prompt answer is a list": ({"POST /prompt": lambda p, b: ok(["p1"])}, 2, "without a prompt id"),
    "upload without a name": ({"POST /upload/image": lambda p, b: ok({"subfolder": ""})}, 2, "without the file's name"),
    "upload answer is a string": ({"POST /upload/image": lambda p, b: ok("me.png")}, 2, "without the file's name"),
    "string error field": ({"POST /prompt": lambda p, b: ok({"error": "invalid prompt", "node_errors": []}, 400)},
                           1, "ComfyUI rejected the workflow"),
    "string error with status 200": ({"POST /prompt": lambda p, b: ok({"error": "queue is full"})}, 1, "queue is full"),
    "node errors of the wrong shape": ({"POST /prompt": lambda p, b: ok(
        {"error": {"message": "bad"}, "node_errors": {"3": "oops", "7": {"errors": ["x", 5]}}}, 400)}, 1, "rejected"),
    "history is a list": ({"GET /history/*": lambda p, b: ok([1, 2])}, 2, "list, not a JSON object"),
    "history is HTML": ({"GET /history/*": html}, 2, "an HTML page"),
    "history entry is a string": ({"GET /history/*": lambda p, b: ok({"p1": "done"})}, 2, "malformed entry"),
    "history status is a string": ({"GET /history/*": lambda p, b: ok({"p1": {"status": "ok", "outputs": {}}})},
                                   2, "malformed entry"),
    "history outputs are a list": ({"GET /history/*": lambda p, b: ok(
        {"p1": {"status": {"completed": True}, "outputs": [1]}})}, 2, "malformed entry"),
    "history error with odd messages": ({"GET /history/*": lambda p, b: ok(
        {"p1": {"status": {"status_str": "error", "messages": ["x", [1], ["execution_error", "y"]]}}})},
        1, "the prompt failed"),
    "history answers 500": ({"GET /history/*": lambda p, b: (500, "application/json", b"{}")}, 2, "HTTP 500"),
    "json nested too deeply": ({"POST /prompt": lambda p, b: (200, "application/json", b"[" * 100000 + b"]" * 100000)},
                               2, "nested too deeply"),
    "html page instead of the video": ({"GET /view": html}, 2, "download of clip_00001_.mp4 with an HTML page"),
    "not json at all": ({"POST /prompt": lambda p, b: (200, "text/plain", b"OK")}, 2, "not JSON"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_answers_give_one_clear_line(case, comfy, files, capsys):
    routes, expected_code, message = HOSTILE[case]
    comfy.routes.update(routes)
    code, seconds = run(comfy, files)
    err = capsys.readouterr().err
    one_error_line(err)
    assert code == expected_code and message in err, (code, err)
    assert not (files / "out").exists()  # nothing saved from a bad answer
    assert seconds < 10, f"{case}: took {seconds:.1f} s (polling a malformed answer until --timeout 3600?)"


def test_non_http_answer_is_one_line(comfy, files, capsys):
    class Raw(comfy.handler_class):
        def do_POST(self):  # no status line at all
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.wfile.write(b"hello there\r\n\r\n")
            self.close_connection = True

    comfy.httpd.RequestHandlerClass = Raw
    code, _ = run(comfy, files)
    assert code == 2 and "broke off its answer" in one_error_line(capsys.readouterr().err)


def test_a_silent_upload_times_out_in_seconds(comfy, files, capsys):
    comfy.routes["POST /upload/image"] = comfy.hang
    code, seconds = run(comfy, files)
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "did not answer POST /upload/image within 0.5 s" in line
    assert seconds < HANG_LIMIT_S - 2, seconds  # not the server answering late by itself


def test_polling_stops_at_the_timeout_and_interrupts(comfy, files, capsys):
    comfy.routes["GET /history/*"] = lambda p, b: ok({})  # well-formed: "not finished yet"
    code, seconds = run(comfy, files, timeout="1")
    assert code == 1 and "did not finish within 1s" in one_error_line(capsys.readouterr().err)
    assert seconds < 10 and any(r[1] == "/interrupt" for r in comfy.requests)


@pytest.mark.parametrize("depth", [100000, 65])
def test_deeply_nested_workflow_or_value_is_refused(depth, comfy, files, capsys):
    deep = "[" * depth + "]" * depth
    (files / "wf.json").write_text(json.dumps(WORKFLOW)[:-1] + f', "99": {{"class_type": "X", "inputs": {{"v": {deep}}}}}}}')
    code, _ = run(comfy, files)
    assert code == 2 and "nested" in one_error_line(capsys.readouterr().err)
    (files / "wf.json").write_text(json.dumps(WORKFLOW))
    code, _ = run(comfy, files, "--set", f"3.seed={deep}")
    assert code == 2 and "nested" in one_error_line(capsys.readouterr().err)
    assert comfy.requests == []  # refused before anything was sent


# ----------------------------------------------------------------------------- point 5: never overwrite, plain names

def test_downloads_never_replace_existing_files(comfy, files, capsys):
    target = files / "out" / "memo" / "clip_00001_.mp4"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"my earlier video")
    assert run(comfy, files)[0] == 0
    assert run(comfy, files)[0] == 0
    assert target.read_bytes() == b"my earlier video"
    names = sorted(p.name for p in target.parent.iterdir())
    assert names == ["clip_00001_ (1).mp4", "clip_00001_ (2).mp4", "clip_00001_.mp4"]
    assert (target.parent / "clip_00001_ (1).mp4").read_bytes().startswith(b"DATA clip_00001_.mp4")
    assert run(comfy, files, "--overwrite")[0] == 0
    assert target.read_bytes().startswith(b"DATA clip_00001_.mp4")
    assert len(list(target.parent.iterdir())) == 3  # replaced in place, no temporary left


def test_two_outputs_of_one_run_with_the_same_name_both_survive(comfy, files):
    comfy.outputs = [{"filename": "a.png", "subfolder": "", "type": "output"}] * 2
    assert run(comfy, files)[0] == 0
    assert sorted(p.name for p in (files / "out").iterdir()) == ["a (1).png", "a.png"]


@pytest.mark.parametrize("name, subfolder", [(".", ""), ("..", ""), ("", "x"), ("a/b.png", ""), ("a\\b.png", ""),
                                             ("a\x00b.png", ""), (" ", ""), ("ok.png", ".."), ("ok.png", "a/../.."),
                                             ("ok.png", "/etc"), (5, ""), ("ok.png", ["x"])])
def test_output_names_that_are_not_plain_file_names_are_refused(name, subfolder, comfy, files, capsys):
    comfy.outputs = [{"filename": "fine.png", "subfolder": "", "type": "output"},
                     {"filename": name, "subfolder": subfolder, "type": "output"}]
    out = files / "out"
    code, _ = run(comfy, files)
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and ("unsafe" in line or "not a plain file name" in line), line
    assert not out.exists()  # checked before the first download: nothing written, no file in the folder's place
    assert not any(r[1].startswith("/view") for r in comfy.requests)


@pytest.mark.parametrize("address", ["http://127.0.0.1:99999", "http://[::1", "ftp://127.0.0.1:8188", "127.0.0.1:8188",
                                     "http://:8188", "http://127.0.0.1:port"])
def test_bad_server_addresses_are_one_line(address, files, capsys):
    code = qw.main([str(files / "wf.json"), "--server", address, "--set", "3.seed=1"])
    assert code == 2 and "bad --server address" in one_error_line(capsys.readouterr().err)


def test_out_that_is_a_file_is_refused_before_uploading(comfy, files, capsys):
    (files / "out").write_bytes(b"keep me")
    code, _ = run(comfy, files)
    assert code == 2 and "is a file" in one_error_line(capsys.readouterr().err)
    assert comfy.requests == [] and (files / "out").read_bytes() == b"keep me"


# ----------------------------------------------------------------------------- issue 21 point 6: --jobs

def write_csv(files, text):
    path = files / "jobs.csv"
    path.write_text(text)
    return path


def test_jobs_run_one_prompt_per_row_and_print_a_table(comfy, files, capsys):
    (files / "a.wav").write_bytes(b"a")
    (files / "b.wav").write_bytes(b"b")
    jobs = write_csv(files, "Speech.audio,3.seed,out\n@a.wav,7,first\n\n@b.wav,8,\n")
    code, _ = run(comfy, files, "--jobs", str(jobs))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert [p["3"]["inputs"]["seed"] for p in comfy.prompts] == [7, 8]
    assert [p["7"]["inputs"]["audio"] for p in comfy.prompts] == ["a.wav", "b.wav"]
    assert all(p["12"]["inputs"]["image"] == "me.png" for p in comfy.prompts)  # the --set applies to every row
    assert (files / "out" / "first" / "memo" / "clip_00001_.mp4").is_file()
    assert (files / "out" / "line-4" / "memo" / "clip_00001_.mp4").is_file()
    table = captured.out.splitlines()
    assert table[0].split() == ["row", "status", "prompt", "id", "seconds", "outputs"]
    assert table[1].split()[:4] == ["line", "2", "ok", "p1"] and "first" in table[1]
    assert table[2].split()[:4] == ["line", "4", "ok", "p2"]
    assert table[-1] == "2 ok, 0 failed"


def test_jobs_jsonl_values_keep_their_types(comfy, files, capsys):
    path = files / "jobs.jsonl"
    path.write_text('{"3.seed": 11, "3.steps": "5", "Speech.audio": "@hi.wav"}\n'
                    '{"3.seed": 12, "3.steps": "@@lit", "20.filename_prefix": "x/y"}\n')
    assert run(comfy, files, "--jobs", str(path))[0] == 0
    assert [(p["3"]["inputs"]["seed"], p["3"]["inputs"]["steps"]) for p in comfy.prompts] == [(11, 5), (12, "@lit")]
    assert comfy.prompts[1]["20"]["inputs"]["filename_prefix"] == "x/y"


def test_every_bad_row_is_listed_before_anything_is_uploaded(comfy, files, capsys):
    jobs = write_csv(files, "Speech.audio,3.seed,3.model,out\n"
                            "@hi.wav,1,,\n"             # line 2: fine
                            "@missing.wav,2,,\n"        # line 3: no such file
                            "@hi.wav,3,@me.png,\n"      # line 4: a file into a link
                            "@hi.wav,4,,../escape\n"    # line 5: out outside --out
                            "@hi.wav,5,,\n")            # line 6: fine
    code, _ = run(comfy, files, "--jobs", str(jobs))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "3 problem(s)" in err
    assert "line 3: Speech.audio: file to upload not found" in err
    assert "line 4:" in err and "is a link to node 4" in err
    assert "line 5:" in err and "'..'" in err
    assert "line 2:" not in err and "line 6:" not in err
    assert comfy.requests == []


def test_bad_columns_are_named_once(comfy, files, capsys):
    jobs = write_csv(files, "Speech.audio,image,99.seed,3.sede\n@hi.wav,x,1,2\n@hi.wav,y,3,4\n")
    code, _ = run(comfy, files, "--jobs", str(jobs))
    err = capsys.readouterr().err
    assert code == 2 and "3 problem(s)" in err and comfy.requests == []
    assert "line 1: column 'image': expected NODE.INPUT" in err
    assert "line 1: column '99.seed': no node '99'" in err
    assert "line 1: column '3.sede': node 3 (KSampler) has no input 'sede'" in err


def test_unreadable_manifest_is_one_message(comfy, files, capsys):
    jobs = write_csv(files, "Speech.audio\n")
    assert run(comfy, files, "--jobs", str(jobs))[0] == 2
    assert "no rows" in capsys.readouterr().err
    assert run(comfy, files, "--jobs", str(files / "jobs.txt"))[0] == 2
    assert "unknown manifest type" in capsys.readouterr().err
    assert comfy.requests == []


def test_jobs_and_batch_exclude_each_other(files):
    with pytest.raises(SystemExit) as stop:
        qw.main([str(files / "wf.json"), "--jobs", "j.csv", "--batch", "7.audio=x"])
    assert stop.value.code == 2


def test_a_failed_prompt_does_not_stop_the_others(comfy, files, capsys):
    comfy.failing_seeds = {2}
    jobs = write_csv(files, "3.seed\n1\n2\n3\n")
    code, _ = run(comfy, files, "--jobs", str(jobs))
    captured = capsys.readouterr()
    assert code == 1
    assert [p["3"]["inputs"]["seed"] for p in comfy.prompts] == [1, 2, 3]
    rows = captured.out.splitlines()
    assert rows[1].split()[:3] == ["line", "2", "ok"]
    assert rows[2].split()[:4] == ["line", "3", "failed", "p2"] and "seed refused" in rows[2]
    assert rows[3].split()[:3] == ["line", "4", "ok"]
    assert rows[-1] == "2 ok, 1 failed"
    assert "error: line 3: node 3 (KSampler) failed: RuntimeError: seed refused" in captured.err


def test_a_broken_server_stops_the_rest_with_a_table(comfy, files, capsys):
    def second_is_html(path, body):  # a login page appears in front of ComfyUI after the first prompt
        return html(path, body) if comfy.prompts else comfy.default_post(path, body)

    comfy.routes["POST /prompt"] = second_is_html
    jobs = write_csv(files, "3.seed\n1\n2\n3\n")
    code, _ = run(comfy, files, "--jobs", str(jobs))
    captured = capsys.readouterr()
    assert code == 2 and "stopping" in captured.err
    assert [line.split()[2] for line in captured.out.splitlines()[1:4]] == ["ok", "failed", "not"]
    assert captured.out.splitlines()[-1] == "1 ok, 1 failed, 1 not run"


def test_the_script_reads_manifests_without_installing_or_importing_torch(comfy, files, tmp_path):
    """The pack's folder as ComfyUI has it (scripts/ and memo_pipeline/ side by side, no install), run
    by a Python that cannot import memo_pipeline from anywhere else."""
    pack = tmp_path / "pack"
    (pack / "scripts").mkdir(parents=True)
    (pack / "memo_pipeline").mkdir()
    (pack / "scripts" / "queue_workflow.py").write_bytes(SCRIPT.read_bytes())
    (pack / "memo_pipeline" / "manifest.py").write_bytes(MANIFEST.read_bytes())
    jobs = write_csv(files, "3.seed,Speech.audio\n5,@hi.wav\n6,@hi.wav\n")
    probe = ("import runpy, sys\n"
             "sys.argv = sys.argv[1:]\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as stop:\n    code = stop.code\n"
             "print('EXIT', code, 'torch' in sys.modules, 'memo_pipeline' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-I", "-c", probe, str(pack / "scripts" / "queue_workflow.py"),
                             str(files / "wf.json"), "--server", comfy.url, "--jobs", str(jobs),
                             "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=60)
    assert result.stdout.strip().endswith("EXIT 0 False False"), result.stdout + result.stderr
    assert [p["3"]["inputs"]["seed"] for p in comfy.prompts] == [5, 6]
