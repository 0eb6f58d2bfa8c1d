"""`python -m memo_pipeline batch JOBS --out-dir DIR`: many videos from one manifest, in this process
or on Ray workers, with every finished clip kept on disk so that nothing is lost when a run stops.

- `jobs`:      manifest rows -> checked `BatchRow`s (every problem of the file reported at once);
- `rowfolder`: one row's durable work (lossless clip files + the generation state) and its final mp4;
- `runner`:    models loaded once, rows run one after another (resuming from a row's folder);
- `cluster`:   the same rows on long-lived Ray actors that pull from a queue and survive lost workers;
- `report`:    the progress bar, the per-row lines, the summary table and the JSON report;
- `cli`:       the command line that ties them together.
"""
