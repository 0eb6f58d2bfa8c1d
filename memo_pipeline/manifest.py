"""Job manifests: one video per row, as CSV (header on line 1) or JSON Lines.

Both `python -m memo_pipeline batch` and `scripts/queue_workflow.py --jobs` read their rows here, so
a file that one accepts the other reads the same way. Problems are collected for the whole file and
reported together with the line number a text editor shows, because a user fixing a 300-row
manifest wants every bad row at once, not one per run.

This module uses the standard library only: the queue script imports it without torch.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class ManifestRow:
    """One row: `line` is its (first) line in the file, `values` its non-empty cells by column."""

    line: int
    values: dict


@dataclass
class ManifestProblem:
    line: int  # 0 = the file as a whole
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}" if self.line else self.reason


class ManifestError(ValueError):
    """Every problem found in a manifest, one per line of the message."""

    def __init__(self, path: Path | str, problems: list[ManifestProblem]):
        self.path = Path(path)
        self.problems = sorted(problems, key=lambda p: p.line)
        listed = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{self.path}: {len(self.problems)} problem(s):\n{listed}")


@dataclass
class Manifest:
    path: Path
    rows: list[ManifestRow] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)


def manifest_format(path: Path | str) -> str:
    """'csv' or 'jsonl' from the file name; anything else is a usage error."""
    suffix = Path(path).suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ManifestError(path, [ManifestProblem(0, f"unknown manifest type {suffix or '(no suffix)'!r}: "
                                                      "use a .csv file with a header row or a .jsonl file")])
    return MANIFEST_SUFFIXES[suffix]


def read_manifest(path: Path | str) -> Manifest:
    """Read every row; raise ManifestError listing all structural problems (not the values' meaning)."""
    path = Path(path)
    kind = manifest_format(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ManifestError(path, [ManifestProblem(0, f"not UTF-8 text ({err.reason} at byte {err.start})")]) from None
    except OSError as err:
        raise ManifestError(path, [ManifestProblem(0, f"cannot read it: {err.strerror or err}")]) from None
    manifest = _read_csv(path, text) if kind == "csv" else _read_jsonl(path, text)
    if not manifest.rows:
        raise ManifestError(path, [ManifestProblem(0, "it has no rows")])
    return manifest


def _read_csv(path: Path, text: str) -> Manifest:
    reader = csv.reader(io.StringIO(text, newline=""))
    problems: list[ManifestProblem] = []
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise ManifestError(path, [ManifestProblem(1, f"unreadable header: {err}")]) from None
    if not header or not any(cell.strip() for cell in header):
        raise ManifestError(path, [ManifestProblem(1, "the first line must be a header naming the columns")])
    columns = [cell.strip() for cell in header]
    seen: set[str] = set()
    for name in columns:
        if not name:
            problems.append(ManifestProblem(1, "a column has no name"))
        elif name in seen:
            problems.append(ManifestProblem(1, f"column {name!r} appears twice"))
        seen.add(name)
    rows: list[ManifestRow] = []
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            problems.append(ManifestProblem(line, f"unreadable row: {err}"))
            break
        first_line, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue  # blank lines are allowed between rows
        if len(cells) > len(columns):
            problems.append(ManifestProblem(first_line, f"{len(cells)} cells for {len(columns)} columns"))
            continue
        values = {name: cell.strip() for name, cell in zip(columns, cells) if name and cell.strip()}
        rows.append(ManifestRow(first_line, values))
    if problems:
        raise ManifestError(path, problems)
    return Manifest(path, rows, [c for c in columns if c])


def _read_jsonl(path: Path, text: str) -> Manifest:
    problems: list[ManifestProblem] = []
    rows: list[ManifestRow] = []
    columns: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as err:
            reason = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
            problems.append(ManifestProblem(number, f"not JSON ({reason})"))
            continue
        if not isinstance(value, dict):
            problems.append(ManifestProblem(number, f"each line must be a JSON object, not {type(value).__name__}"))
            continue
        bad = [k for k, v in value.items() if isinstance(v, (dict, list))]
        if bad:
            problems.append(ManifestProblem(number, f"values must be strings or numbers ({', '.join(bad)})"))
            continue
        values = {str(k).strip(): v for k, v in value.items() if v is not None and str(v).strip() != ""}
        columns.extend(k for k in values if k not in columns)
        rows.append(ManifestRow(number, values))
    if problems:
        raise ManifestError(path, problems)
    return Manifest(path, rows, columns)
