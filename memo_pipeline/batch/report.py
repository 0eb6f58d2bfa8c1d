"""What a batch shows while it runs and leaves behind: one overall bar (clips and rows done, ETA),
a line per finished row, a summary table, and the same facts as JSON (`--report FILE`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .jobs import BatchRow
from .runner import DONE, FAILED, SKIPPED, RowResult, Startup


class BatchProgress:
    """The overall bar counts clips (rows already finished or skipped count all theirs)."""

    def __init__(self, rows: list[BatchRow], enabled: bool = True, initial: dict[int, int] | None = None):
        from tqdm import tqdm

        self.rows_total = len(rows)
        self.rows_done = 0
        self.clips = dict(initial or {})  # manifest line -> clips finished
        total = sum(row.num_clips for row in rows)
        self.bar = tqdm(total=total, initial=sum(self.clips.values()), desc="batch", unit="clip",
                        disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"rows {self.rows_done}/{self.rows_total}", refresh=False)

    def clip_done(self, row: BatchRow, clips_finished: int) -> None:
        before = self.clips.get(row.line, 0)
        if clips_finished > before:
            self.clips[row.line] = clips_finished
            self.bar.update(clips_finished - before)

    def row_done(self, row: BatchRow, result: RowResult) -> None:
        if result.status in (DONE, SKIPPED):
            self.clip_done(row, row.num_clips)
        if result.status in (DONE, SKIPPED, FAILED):
            self.rows_done += 1
        self._postfix()
        self.bar.refresh()
        self.bar.write(row_line(result), file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def row_line(result: RowResult) -> str:
    where = f" on {result.worker}" if result.worker else ""
    if result.status == FAILED:
        return f"line {result.line}: failed{where}: {result.error}"
    if result.status == SKIPPED:
        return f"line {result.line}: already complete, {result.frames} frames -> {result.out}"
    if result.status == DONE:
        extra = f", continued from clip {result.resumed_from + 1}" if result.resumed_from else ""
        extra += f", {result.attempts} attempts" if result.attempts > 1 else ""
        return (f"line {result.line}: done in {result.seconds:.1f} s{where}, {result.frames} frames{extra} "
                f"-> {result.out}")
    return f"line {result.line}: {result.status}{where} ({result.clips_generated} clip(s) kept for the next run)"


def summary_table(results: list[RowResult]) -> str:
    header = ("row", "status", "worker", "seconds", "frames", "output")
    rows = [(str(r.line), r.status, r.worker or "-", f"{r.seconds:.1f}", str(r.frames), r.out) for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    counts = count_statuses(results)
    lines.append(", ".join(f"{n} {status}" for status, n in counts.items()))
    return "\n".join(lines)


def count_statuses(results: list[RowResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    return counts


def write_report(path: Path, results: list[RowResult], manifest: Path, mode: str, workers: int, seconds: float,
                 startup: Startup | None = None) -> None:
    """The JSON report, written whole under a temporary name first. `startup`:
    the part of `seconds` spent before rows could run (model load; on Ray the workers' start)."""
    report = {"manifest": os.fspath(manifest), "mode": mode, "workers": workers, "seconds": round(seconds, 3),
              "startup": startup.as_dict() if startup is not None else None,
              "counts": count_statuses(results), "rows": [r.as_dict() for r in results]}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)
