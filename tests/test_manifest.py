"""The shared job-manifest reader: CSV and JSON Lines rows with the line numbers an editor shows."""
from __future__ import annotations

import pytest

from memo_pipeline.manifest import ManifestError, read_manifest


def test_csv_rows_carry_their_file_lines(tmp_path):
    path = tmp_path / "jobs.csv"
    path.write_text('image,audio,seed\na.png,a.wav,1\n\nb.png,"b\nc.wav",\nc.png,c.wav,3\n', encoding="utf-8")
    manifest = read_manifest(path)
    assert [r.line for r in manifest.rows] == [2, 4, 6]
    assert manifest.rows[1].values == {"image": "b.png", "audio": "b\nc.wav"}  # empty cells are absent
    assert manifest.columns == ["image", "audio", "seed"]


def test_jsonl_rows_and_every_problem_at_once(tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"image": "a.png", "seed": 4}\n[1]\n\n{oops\n{"image": {"x": 1}}\n', encoding="utf-8")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert [p.line for p in err.value.problems] == [2, 4, 5]
    good = tmp_path / "good.jsonl"
    good.write_text('{"image": "a.png", "seed": 4}\n\n{"image": "b.png", "out": ""}\n', encoding="utf-8")
    rows = read_manifest(good).rows
    assert [(r.line, r.values) for r in rows] == [(1, {"image": "a.png", "seed": 4}), (3, {"image": "b.png"})]


@pytest.mark.parametrize("name, text, needle", [
    ("jobs.txt", "image\n", "unknown manifest type"),
    ("jobs.csv", "", "header"),
    ("jobs.csv", "image,image\na,b\n", "appears twice"),
    ("jobs.csv", "image\n", "no rows"),
    ("jobs.csv", "image,audio\na,b,c\n", "3 cells for 2 columns"),
])
def test_bad_files_are_refused_with_a_reason(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError, match=needle):
        read_manifest(path)


def test_manifest_module_needs_no_torch():
    import subprocess
    import sys
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "memo_pipeline" / "manifest.py"
    code = (f"import sys, importlib.util as u; s = u.spec_from_file_location('m', {str(source)!r}); "
            "m = u.module_from_spec(s); sys.modules['m'] = m; s.loader.exec_module(m); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
