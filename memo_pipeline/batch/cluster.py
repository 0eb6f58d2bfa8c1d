"""The batch on Ray: long-lived workers that load the models once and take rows from a queue.

One actor per GPU (or `--workers N` actors of `--threads-per-worker` CPUs each). Each checks its
node's model files at start (a worker without them fails with what `models check` says) and keeps
its models for every row it runs. The driver hands a row to whichever worker is free; when a
worker dies during a row (process killed, node lost, preempted), Ray restarts the actor and the
row goes back to the front of the queue, where the next free worker continues it from its last
finished clip (the row's folder must be on storage every node sees: the output folder).
"""

from __future__ import annotations

import collections
import os
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .jobs import BatchRow
from .rowfolder import RowFolder
from .runner import FAILED, INTERRUPTED, NOT_STARTED, RowResult, RowRunner, Startup, models_problem, worker_name

INSTALL_HINT = "pip install 'comfyui-memo[cluster]' (or pip install -r requirements-cluster.txt)"
ACTOR_RESTARTS = 4  # per worker: a worker that keeps dying is given up after this many restarts
REVIVE_SECONDS = 300  # how long a lost worker may take to come back (a new process loading the models)
ROW_ATTEMPTS = 4  # a row whose workers died this many times is reported failed (it may be what kills them)
WORKER_ENV = {"RAY_worker_niceness": "0"}
"""Set in each worker's environment. A Ray worker lowers its own priority to nice 15 at start
(Ray's `worker_niceness`), meant for short tasks that must not starve the node's daemons; a batch
worker is the whole job, and at nice 15 every other runnable process on the node (the driver,
raylet, other users' work) preempts its threads at once, so its rows ran slower than the same rows
in process on a machine with no idle core (bench/batch.py). With 0 it runs at the priority of the
command that started it, as the in-process batch does. Read by the worker itself at start (not by
the raylet), so it holds on any cluster and needs no privilege."""


LOCAL_CLUSTER_ENV = {"RAY_enable_worker_prestart": "false", "RAY_prestart_worker_first_driver": "false",
                     "RAY_enable_metrics_collection": "false"}
"""Ray settings (read from the environment by its daemons, ignored by versions without them) for the
cluster `--ray` starts on this machine, which lives for one command: no idle worker processes
started ahead (the batch workers cannot use them: their environment differs) and no metrics
collection (nothing reads them without the dashboard). Measured on a 2-core VM, Ray's own
processes then take 0.62 CPU s per 30 s idle instead of 1.31 (bench/batch.py prints their share
during a run). A cluster the batch joins keeps its own settings."""


class ClusterError(RuntimeError):
    """Ray missing, the cluster unreachable, or no worker could start; one line for the user."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def connect(address: str | None):
    """Join the cluster at `address`, or start one on this machine; an already connected driver stays."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    options = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
    try:
        if address:
            ray.init(address=address, **options)
        else:  # the local workers import this checkout's library like the driver does
            package_root = str(Path(__file__).resolve().parents[2])
            path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
            with _environment(LOCAL_CLUSTER_ENV):  # the daemons started here read it; this process's stays
                ray.init(runtime_env={"env_vars": {"PYTHONPATH": path}}, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(f"cannot {'reach the Ray cluster at ' + address if address else 'start Ray'}: {err}") from None
    return ray


@contextmanager
def _environment(values: dict[str, str]):
    """`values` set in os.environ inside the block (where the user set one, theirs stays), restored after."""
    added = {name: value for name, value in values.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


class StopFlag:
    """A named actor whose existence means "stop": the driver creates it on Ctrl-C, and every worker
    looks its name up after each clip. A worker runs one call at a time, its rows in its main
    thread, so a `stop` call to the worker itself would only arrive after the row; and a flag that
    exists only once needed costs no process while the batch runs."""


class _RemoteStop:
    """The `threading.Event` face of the `StopFlag` named `name`, which `RowRunner.run` reads."""

    def __init__(self, name: str):
        self.name = name

    def is_set(self) -> bool:
        import ray

        try:
            ray.get_actor(self.name)
        except ValueError:  # no such actor: nobody asked to stop
            return False
        return True


class BatchWorker:
    """The body of one Ray actor (made remote by `_actor_class`)."""

    def __init__(self, template, threads: int, keep_clips: bool = False, stop_flag: str | None = None):
        import torch

        torch.set_num_threads(max(1, threads))
        problem = models_problem(template)
        if problem is not None:
            raise ClusterError(problem)
        self.runner = RowRunner(template, name=worker_name(), threads=max(1, threads), keep_clips=keep_clips)
        self.runner.load()
        self.stop_event = _RemoteStop(stop_flag) if stop_flag is not None else threading.Event()

    def identity(self) -> dict:
        return {"name": self.runner.name, "pid": os.getpid(), "load_seconds": self.runner.load_seconds}

    def run_row(self, row: BatchRow) -> RowResult:
        return self.runner.run(row, self.stop_event)


def _actor_class(ray, gpu: bool, threads: int):
    """One call at a time, so rows run in the worker's main thread, where it loaded its models: the
    OpenMP thread team torch made there is the one the rows use. A threaded actor ran rows in
    another thread, which made a second team; with more OpenMP threads than cores, libgomp lets
    waiting threads spin only briefly before sleeping, and every parallel region paid for the
    wake-ups (bench/batch.py)."""
    resources = {"num_gpus": 1} if gpu else {"num_cpus": threads}
    return ray.remote(max_restarts=ACTOR_RESTARTS, max_task_retries=0,
                      runtime_env={"env_vars": dict(WORKER_ENV)}, **resources)(BatchWorker)


@dataclass
class _Worker:
    handle: object
    name: str = "starting"
    deaths: int = 0
    alive: bool = True
    revive_until: float = 0.0  # while Ray restarts it, calls may fail; they are retried until then


@dataclass
class ClusterRun:
    """Schedules rows on the workers; `stop` ends every row after its current clip."""

    rows: list[BatchRow]
    template: object
    workers: int
    threads: int
    stop: threading.Event = field(default_factory=threading.Event)
    on_clip: object = None
    on_row: object = None
    keep_clips: bool = False
    poll_seconds: float = 0.5
    startup: Startup = field(default_factory=Startup)

    def run(self, ray) -> list[RowResult]:
        import ray.exceptions as errors

        lost_worker = tuple(getattr(errors, name) for name in ("RayActorError", "ActorDiedError", "ActorUnavailableError")
                            if hasattr(errors, name))
        gpu = str(self.template.device).startswith("cuda") and ray.cluster_resources().get("GPU", 0) >= 1
        actor = _actor_class(ray, gpu, self.threads)
        template = _without_progress(self.template)
        asked = time.perf_counter()
        self.stop_flag_name, self.stop_flag = f"memo-batch-stop-{uuid.uuid4().hex}", None
        workers = [_Worker(actor.remote(template, self.threads, self.keep_clips, self.stop_flag_name))
                   for _ in range(self.workers)]
        self.workers_started = 0
        starting = {w.handle.identity.remote(): w for w in workers}
        problems = []
        while starting:  # every worker checks its models and loads them before rows are handed out
            ready, _ = ray.wait(list(starting), num_returns=1)
            worker = starting.pop(ready[0])
            try:
                identity = ray.get(ready[0])
                worker.name = identity["name"]
                self.workers_started += 1
                self.startup.model_load_seconds = max(self.startup.model_load_seconds, identity["load_seconds"])
            except lost_worker as err:
                worker.alive = False
                problems.append(_cause(err))
        self.startup.seconds = time.perf_counter() - asked
        if not self.workers_started:
            raise ClusterError("no worker could start: " + "; ".join(dict.fromkeys(problems)))
        for problem in dict.fromkeys(problems):
            print(f"warning: a worker did not start: {problem}", flush=True)
        return self._schedule(ray, workers, lost_worker)

    def _schedule(self, ray, workers: list[_Worker], lost_worker) -> list[RowResult]:
        results: dict[int, RowResult] = {}
        attempts = collections.Counter()
        queue = collections.deque(self.rows)
        idle = collections.deque(w for w in workers if w.alive)
        running: dict = {}  # task -> (worker, row)
        reviving: dict = {}  # identity call of a restarted worker -> worker
        stop_sent = False

        def finish(row: BatchRow, result: RowResult) -> None:
            results[row.line] = result
            if self.on_row is not None:
                self.on_row(row, result)

        while queue or running:
            if self.stop.is_set():
                if not stop_sent:  # kept referenced until the run ends, so that it lives as long
                    self.stop_flag = ray.remote(num_cpus=0)(StopFlag).options(name=self.stop_flag_name).remote()
                    stop_sent = True
                while queue:
                    row = queue.popleft()
                    finish(row, RowResult(row.line, str(row.out), INTERRUPTED if attempts[row.line] else NOT_STARTED,
                                          attempts=attempts[row.line]))
            while queue and idle:
                worker, row = idle.popleft(), queue.popleft()
                attempts[row.line] += 1
                running[worker.handle.run_row.remote(row)] = (worker, row)
            if not running and not reviving:
                for row in queue:  # every worker is gone
                    finish(row, RowResult(row.line, str(row.out), FAILED, error="no worker left to run it"))
                queue.clear()
                break
            ready, _ = ray.wait([*running, *reviving], num_returns=1, timeout=self.poll_seconds)
            self._report_clips(running.values())
            for task in ready:
                if task in reviving:
                    worker = reviving.pop(task)
                    try:
                        worker.name = ray.get(task)["name"]
                        idle.append(worker)
                    except lost_worker:
                        if time.monotonic() < worker.revive_until:  # still being restarted: ask again
                            time.sleep(self.poll_seconds)
                            reviving[worker.handle.identity.remote()] = worker
                        else:
                            worker.alive = False
                    continue
                worker, row = running.pop(task)
                try:
                    result = ray.get(task)
                except lost_worker as err:
                    worker.deaths += 1
                    if worker.deaths <= ACTOR_RESTARTS:
                        worker.revive_until = time.monotonic() + REVIVE_SECONDS
                        reviving[worker.handle.identity.remote()] = worker  # Ray restarts it; back when ready
                    else:
                        worker.alive = False
                    if attempts[row.line] >= ROW_ATTEMPTS:
                        finish(row, RowResult(row.line, str(row.out), FAILED, worker.name, attempts=attempts[row.line],
                                              error=f"its worker died {attempts[row.line]} times ({_cause(err)})"))
                    else:
                        print(f"line {row.line}: worker {worker.name} was lost; the row continues on the next free "
                              "worker from its last finished clip", flush=True)
                        queue.appendleft(row)
                    continue
                result.attempts = attempts[row.line]
                idle.append(worker)
                finish(row, result)
        return [results[row.line] for row in self.rows]

    def _report_clips(self, running) -> None:
        if self.on_clip is None:
            return
        for _, row in running:
            self.on_clip(row, RowFolder(row.work_dir).clips_on_disk())


def _without_progress(template):
    import dataclasses

    return dataclasses.replace(template, progress=False)


def _cause(err: BaseException) -> str:
    """The one-line reason inside a Ray actor error (e.g. the worker's models check)."""
    cause = getattr(err, "cause", None) or err
    for text in (str(cause), str(err)):
        for line in text.splitlines():
            if "ClusterError:" in line:
                return line.split("ClusterError:", 1)[1].strip()
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(err).__name__


def run_on_ray(rows: list[BatchRow], template, address: str | None, workers: int | None, threads: int,
               stop: threading.Event, on_clip=None, on_row=None, keep_clips: bool = False,
               startup: Startup | None = None) -> tuple[list[RowResult], int]:
    """Run the rows on a Ray cluster; returns the results and the number of workers that ran.
    `startup`, if given, receives the workers' start (not the cluster's: `connect` is before it)."""
    ray = connect(address)
    if workers is None:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        workers = gpus if gpus and str(template.device).startswith("cuda") else 1
    run = ClusterRun(rows, template, max(1, min(workers, len(rows))), threads, stop, on_clip, on_row, keep_clips,
                     startup=startup or Startup())
    return run.run(ray), run.workers_started
