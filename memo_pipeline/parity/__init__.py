"""Replay golden fixtures made with the official MEMO code and compare every recorded output.

    python -m memo_pipeline.parity DIR [--json] [--case NAME ...] [--threads N] [--cpu-tuning on|off|both]

A fixture is `<case>.json` (constructor/config, ordered `calls`, tensor names) plus
`<case>.safetensors` (`model.*` weights, `in.*` inputs, `out.*` outputs). Weights are loaded
strictly into *our* modules, the calls are replayed in order (motion memory carries over), and
each `out.*` is compared with |ours - ref| <= atol + rtol * |ref|. A `manifest.json` next to the
cases pins every file's size and sha256; a file that differs is reported as a failure instead of
being run. Each case runs with the CPU tuning (`memo_pipeline.cpu_tuning`) off and on unless
`--cpu-tuning` picks one. Exit status is non-zero if any case fails or cannot be run.

Modules: `harness` (case dispatch, comparison, command line), `fixtures` (reading a set),
`modules` (single modules and the two networks), `pipeline_case` (the clip loop through
`MemoPipeline`), `audio_case` (the wav2vec2 preprocessing).
"""

from .harness import CaseResult, Tolerance, main, run_case, run_directory

__all__ = ["CaseResult", "Tolerance", "main", "run_case", "run_directory"]
