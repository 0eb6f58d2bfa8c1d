"""scripts/queue_workflow.py without a ComfyUI server: parsing, substitution, outputs, errors."""
import email
import json
import re
import shlex
import socket
from pathlib import Path

import pytest
from support import load_module

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "queue_workflow.py"
qw = load_module("memo_queue_workflow", SCRIPT)  # the same module object as test_queue_hostile's

WORKFLOW = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "model": ["4", 0]}},
    "7": {"class_type": "LoadAudio", "inputs": {"audio": "old.wav"}, "_meta": {"title": "Speech"}},
    "12": {"class_type": "LoadImage", "inputs": {"image": "old.png"}, "_meta": {"title": "Portrait"}},
    "20:5": {"class_type": "SaveVideo", "inputs": {"filename_prefix": "memo/clip", "video": ["12", 0]}},
}


@pytest.mark.parametrize("raw, expected", [
    ("42", 42), ("1.5", 1.5), ("true", True), ("null", None), ('"42"', "42"),
    ('["4", 0]', ["4", 0]), ("hello world", "hello world"), ("memo/clip", "memo/clip"), ("", ""),
])
def test_parse_value(raw, expected):
    assert qw.parse_value(raw) == expected


def test_parse_assignment_kinds(tmp_path):
    f = tmp_path / "p.png"
    f.write_bytes(b"x")
    assert qw.parse_assignment(f"12.image=@{f}") == qw.Assignment("12", "image", upload=f)
    assert qw.parse_assignment("3.seed=42") == qw.Assignment("3", "seed", 42)
    assert qw.parse_assignment("7.audio=@@literal") == qw.Assignment("7", "audio", "@literal")
    assert qw.parse_assignment("20:5.filename_prefix=a=b") == qw.Assignment("20:5", "filename_prefix", "a=b")
    assert qw.parse_assignment("my.node.text=x") == qw.Assignment("my.node", "text", "x")


@pytest.mark.parametrize("bad", ["3seed=4", "3.seed", ".seed=1", "3.=1"])
def test_parse_assignment_rejects_malformed(bad):
    with pytest.raises(qw.UsageError):
        qw.parse_assignment(bad)


def test_parse_assignment_needs_existing_upload_file(tmp_path):
    with pytest.raises(qw.UsageError, match="not found"):
        qw.parse_assignment(f"12.image=@{tmp_path / 'missing.png'}")


def test_apply_assignments_substitutes_and_keeps_original(tmp_path):
    f = tmp_path / "me.png"
    f.write_bytes(b"x")
    sets = [qw.Assignment("12", "image", upload=f), qw.Assignment("3", "seed", 42),
            qw.Assignment("Speech", "audio", "clip.wav"), qw.Assignment("20:5", "filename_prefix", "out/x")]
    out = qw.apply_assignments(WORKFLOW, sets, {f: "sub/me (1).png"})
    assert out["12"]["inputs"]["image"] == "sub/me (1).png"
    assert out["3"]["inputs"] == {"seed": 42, "steps": 20, "model": ["4", 0]}
    assert out["7"]["inputs"]["audio"] == "clip.wav"
    assert out["20:5"]["inputs"]["filename_prefix"] == "out/x"
    assert WORKFLOW["3"]["inputs"]["seed"] == 1


def test_apply_assignments_errors_name_what_exists():
    with pytest.raises(qw.UsageError, match=r"no node '99'.*12 \(LoadImage\)"):
        qw.apply_assignments(WORKFLOW, [qw.Assignment("99", "image", "x")])
    with pytest.raises(qw.UsageError, match="has no input 'imgae'; inputs: image"):
        qw.apply_assignments(WORKFLOW, [qw.Assignment("12", "imgae", "x")])
    out = qw.apply_assignments(WORKFLOW, [qw.Assignment("12", "mask", "m")], allow_new_inputs=True)
    assert out["12"]["inputs"]["mask"] == "m"


def test_duplicate_titles_are_ambiguous():
    wf = {"1": {"class_type": "A", "inputs": {"x": 1}, "_meta": {"title": "T"}},
          "2": {"class_type": "B", "inputs": {"x": 1}, "_meta": {"title": "T"}}}
    with pytest.raises(qw.UsageError, match="several nodes"):
        qw.apply_assignments(wf, [qw.Assignment("T", "x", 2)])


def test_load_workflow_formats(tmp_path):
    api = tmp_path / "api.json"
    api.write_text(json.dumps(WORKFLOW))
    assert qw.load_workflow(api) == WORKFLOW
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"prompt": WORKFLOW, "client_id": "x"}))
    assert qw.load_workflow(wrapped) == WORKFLOW
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(qw.UsageError, match="Export \\(API\\)"):
        qw.load_workflow(ui)
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    with pytest.raises(qw.UsageError, match="not valid JSON"):
        qw.load_workflow(broken)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"1": {"inputs": {}}}))
    with pytest.raises(qw.UsageError, match="node '1'"):
        qw.load_workflow(odd)


HISTORY = {"outputs": {
    "9": {"images": [{"filename": "a_00001_.png", "subfolder": "", "type": "output"},
                     {"filename": "prev.png", "subfolder": "", "type": "temp"}]},
    "20": {"images": [{"filename": "clip_00001_.mp4", "subfolder": "memo", "type": "output"}],
           "animated": [True]},
    "21": {"text": ["not a file"]},
}}


def test_output_files_lists_every_node_and_skips_temp_by_default():
    files = qw.output_files(HISTORY)
    assert [(f["node_id"], f["subfolder"], f["filename"]) for f in files] == [
        ("9", "", "a_00001_.png"), ("20", "memo", "clip_00001_.mp4")]
    assert len(qw.output_files(HISTORY, include_temp=True)) == 3


def test_local_target_mirrors_subfolders_and_refuses_escape(tmp_path):
    assert qw.local_target(tmp_path, {"filename": "c.mp4", "subfolder": "memo"}) == tmp_path / "memo" / "c.mp4"
    with pytest.raises(qw.WorkflowFailed):
        qw.local_target(tmp_path, {"filename": "x", "subfolder": "../.."})


def test_batch_files_filters_and_sorts(tmp_path):
    for name in ("b.wav", "a.wav", "notes.txt", ".hidden.wav"):
        (tmp_path / name).write_text("x")
    (tmp_path / "dir.wav").mkdir()
    assert [p.name for p in qw.batch_files(tmp_path, "*.wav")] == ["a.wav", "b.wav"]
    with pytest.raises(qw.UsageError):
        qw.batch_files(tmp_path, "*.flac")


def test_multipart_body_parses_back():
    body, ctype = qw.multipart({"type": "input", "subfolder": ""}, "image", 'we"ird.wav', b"\x00RIFF\r\n--data")
    msg = email.message_from_bytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
    parts = {p.get_param("name", header="content-disposition"): p for p in msg.get_payload()}
    assert parts["type"].get_payload() == "input"
    assert parts["image"].get_filename() == "we_ird.wav"
    assert parts["image"].get_content_type() == "audio/x-wav"
    assert parts["image"].get_payload(decode=True) == b"\x00RIFF\r\n--data"


def test_failure_descriptions_quote_the_server():
    status = {"status_str": "error", "messages": [
        ["execution_start", {}],
        ["execution_error", {"node_id": "7", "node_type": "LoadAudio", "exception_type": "ValueError",
                             "exception_message": "No audio stream found in the file.\n"}]]}
    assert qw.describe_failure(status) == "node 7 (LoadAudio) failed: ValueError: No audio stream found in the file."
    rejection = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                           "details": ""},
                 "node_errors": {"12": {"class_type": "LoadImage", "errors": [
                     {"message": "Value not in list", "details": "image: 'x.png' not in []"}]}}}
    text = qw.describe_rejection(rejection)
    assert "Prompt outputs failed validation" in text
    assert "node 12 (LoadImage): Value not in list: image: 'x.png' not in []" in text


def test_print_prompt_needs_no_server(tmp_path, capsys):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(WORKFLOW))
    assert qw.main([str(wf), "--set", "3.seed=7", "--print-prompt"]) == 0
    assert json.loads(capsys.readouterr().out)["3"]["inputs"]["seed"] == 7


def test_connection_refused_is_explained(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(WORKFLOW))
    code = qw.main([str(wf), "--server", f"http://127.0.0.1:{port}", "--set", "3.seed=1"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot reach ComfyUI at http://127.0.0.1:{port}" in err
    assert "refused" in err.lower()


def test_bad_arguments_exit_2(tmp_path, capsys):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(WORKFLOW))
    assert qw.main([str(wf), "--set", "nonsense"]) == 2
    assert "expected NODE.INPUT=VALUE" in capsys.readouterr().err
    assert qw.main([str(wf), "--batch", "12.image"]) == 2
    assert "expected --batch NODE.INPUT=DIR" in capsys.readouterr().err
    assert qw.main([str(wf), "--batch", "12.nope=" + str(tmp_path)]) == 2
    assert "has no input 'nope'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- documented commands

REPO = SCRIPT.parents[1]
COMMAND = re.compile(r"python3?\s+\S*queue_workflow\.py\s[^`\n]*")


class RecordingComfy:
    """Stands in for ComfyHTTP (same methods) and records what the script asks of the server, in order."""

    def __init__(self, server, timeout=3600, poll=0.5, log=print, http_timeout=30):
        self.server, self.log, self.events = server, log, []
        RecordingComfy.last = self

    def upload(self, path, subfolder=""):
        self.events.append(("upload", Path(path).name))
        Path(path).read_bytes()  # the file must be there (a manifest's @FILE is relative to its folder)
        return f"uploaded/{Path(path).name}"

    def queue(self, prompt):
        self.events.append(("queue", prompt))
        return f"prompt-{len(self.events)}"

    def wait(self, prompt_id):
        return {"outputs": {}, "status": {"completed": True}}


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) for every queue_workflow.py command line in the READMEs and in --help."""
    sources = {"README.md": (REPO / "README.md").read_text(),
               "workflows/README.md": (REPO / "workflows" / "README.md").read_text(),
               "--help": qw.build_parser().format_help()}
    found = []
    for where, text in sources.items():
        for match in COMMAND.finditer(re.sub(r"\\\n\s*", " ", text)):
            found.append((where, match.group(0).strip()))
    return found


def test_every_place_documents_a_command():
    assert sorted({where for where, _ in documented_commands()}) == ["--help", "README.md", "workflows/README.md"]


@pytest.mark.parametrize("where, command", documented_commands())
def test_documented_command_runs_verbatim_against_the_shipped_workflow(where, command, tmp_path, monkeypatch):
    """The command as printed, run from the pack's folder (its workflows/ linked into a scratch folder
    that holds the files it uploads), against a recording stand-in for the server."""
    argv = shlex.split(command)[2:]
    (tmp_path / "workflows").symlink_to(REPO / "workflows")
    for token in argv:
        target, _, value = token.partition("=")
        if value.startswith("@") and not value.startswith("@@"):
            (tmp_path / value[1:]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / value[1:]).write_bytes(b"not really a picture")
    if "--jobs" in argv:  # the manifest the README describes next to the command
        (tmp_path / "anna.png").write_bytes(b"not really a picture")
        (tmp_path / "intro.wav").write_bytes(b"not really a sound")
        (tmp_path / argv[argv.index("--jobs") + 1]).write_text("Portrait.image,Speech.audio,11.seed\n"
                                                               "@anna.png,@intro.wav,7\n")
    if "--batch" in argv:
        folder = tmp_path / argv[argv.index("--batch") + 1].partition("=")[2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "one.wav").write_bytes(b"x")
        (folder / "two.wav").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(qw, "ComfyHTTP", RecordingComfy)
    assert qw.main(argv) == 0, f"{where}: {command}"
    workflow = qw.load_workflow(argv[0])
    queued = [event[1] for event in RecordingComfy.last.events if event[0] == "queue"]
    assert queued and RecordingComfy.last.events[0][0] == "upload"
    if "--jobs" in argv:
        assert [p["11"]["inputs"]["seed"] for p in queued] == [7]
        assert queued[0]["1"]["inputs"]["image"] == "uploaded/anna.png"
    for prompt in queued:
        for i, token in enumerate(argv):
            if argv[i - 1] != "--set" or "=@" not in token:
                continue
            node, name = qw.parse_target(token.partition("=")[0])
            node_id = qw.find_node(workflow, node)
            assert workflow[node_id]["class_type"] in ("LoadImage", "LoadAudio"), token
            assert prompt[node_id]["inputs"][name] == "uploaded/" + Path(token.partition("=@")[2]).name


def test_every_set_is_checked_before_anything_is_uploaded(tmp_path, monkeypatch, capsys):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(WORKFLOW))
    (tmp_path / "me.png").write_bytes(b"x")
    (tmp_path / "speech.wav").write_bytes(b"x")
    monkeypatch.setattr(qw, "ComfyHTTP", RecordingComfy)
    RecordingComfy.last = None
    code = qw.main([str(wf), "--set", f"Portrait.image=@{tmp_path / 'me.png'}",
                    "--set", f"3.audio=@{tmp_path / 'speech.wav'}"])
    assert code == 2 and "node 3 (KSampler) has no input 'audio'" in capsys.readouterr().err
    assert RecordingComfy.last is None or RecordingComfy.last.events == []  # nothing uploaded
    code = qw.main([str(wf), "--set", f"3.model=@{tmp_path / 'me.png'}"])
    assert code == 2 and "is a link to node 4" in capsys.readouterr().err
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "a.wav").write_bytes(b"x")
    code = qw.main([str(wf), "--set", f"Portrait.image=@{tmp_path / 'me.png'}", "--set", "3.sed=1",
                    "--batch", f"Speech.audio={clips}"])
    assert code == 2 and "has no input 'sed'" in capsys.readouterr().err
    assert RecordingComfy.last is None or RecordingComfy.last.events == []
