"""Download exactly the model files MEMO needs from their public Hugging Face repositories.

    python -m memo_pipeline models fetch [--comfyui DIR | --models DIR] [--only core|emotion|face|vocals] [--yes]

Only this command touches the network; no node, no ``generate`` run and no import of the pack
calls it. What it does:

1. checks what is already there (``model_files.check_models``) and plans the files of every item
   that is missing or unusable - single files, never whole repositories;
2. asks the server for each file's size and checksum (HTTP HEAD through ``huggingface_hub``),
   prints the list and the total and asks for confirmation (``--yes`` skips the question);
3. downloads each file to ``<models>/.memo-fetch/<path>.part`` with ``huggingface_hub``'s HTTP
   client. A ``.part`` file left by an interrupted run is continued with an HTTP Range request.
   A server that sends nothing for ``MEMO_FETCH_READ_TIMEOUT`` seconds (default 30), or less than
   16 kB in ``MEMO_FETCH_STALL_SECONDS`` (default 120), ends the run with one line; what arrived
   is kept for the next run. The finished file's SHA-256 (LFS files) or git blob hash (small
   files) must equal what the server announced, else it is deleted and reported as corrupted;
4. when all files of an item are downloaded, runs the same check as ``models check`` on them
   in the staging folder and only then installs them, all or nothing: each file is first put
   next to its destination under a hidden name (renamed, or copied when the destination folder
   is on another file system, e.g. a symlink to another disk), and only when every file of the
   item is there are they renamed into place (configs last, so a loader never sees a config
   without its weights). The staging folder starts with a dot, so no loader lists it.

``HF_ENDPOINT`` (a mirror), ``HF_TOKEN`` and the usual proxy variables (``HTTPS_PROXY``,
``NO_PROXY``, ...) are honoured: they are read when the command runs. A network failure prints one
line; files that finished stay and the next run continues where this one stopped. An invalid
``HF_ENDPOINT`` is reported in one line when a download is needed (see ``models_cli``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .model_files import (FEATURES, FileProblem, Item, check_item, check_item_at, describe_os_error, format_size,
                          items_for)

STAGING = ".memo-fetch"
DEFAULT_ENDPOINT = "https://huggingface.co"


class FetchError(RuntimeError):
    """A download that could not be completed; the message is one line for the user."""


@dataclass
class PlannedFile:
    item: Item
    repo_path: str
    dest: Path
    url: str = ""
    size: int | None = None
    etag: str | None = None


READ_TIMEOUT_ENV = "MEMO_FETCH_READ_TIMEOUT"
STALL_SECONDS_ENV = "MEMO_FETCH_STALL_SECONDS"
DEFAULT_READ_TIMEOUT = 30.0
"""Seconds without a single byte from the server before a request is given up."""
DEFAULT_STALL_SECONDS = 120.0
"""A download that brings less than STALL_BYTES in this many seconds is given up (a server that
trickles a byte now and then never trips the read timeout)."""
STALL_BYTES = 16 * 1024


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise FetchError(f"{name}={text!r} is not a number of seconds above 0")
    return value


def read_timeout() -> float:
    return _seconds(READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT)


def stall_seconds() -> float:
    return _seconds(STALL_SECONDS_ENV, DEFAULT_STALL_SECONDS)


def endpoint() -> str:
    from .models_cli import hf_endpoint_problem, set_aside_endpoint

    if set_aside_endpoint is not None:
        value = set_aside_endpoint
    else:
        value = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    problem = hf_endpoint_problem(value)
    if problem:
        raise FetchError(f"HF_ENDPOINT={value!r} is not a usable address ({problem}); fix or unset it")
    return value.rstrip("/")


def _token():
    from huggingface_hub import get_token

    return get_token()  # HF_TOKEN, else the token saved by `hf auth login`


def plan(models: Path, features=FEATURES) -> tuple[list[PlannedFile], list]:
    """Files to download for every item of `features` that is not usable yet, and the statuses of all."""
    statuses = [check_item(item, models) for item in items_for(features)]
    files = []
    for status in statuses:
        if status.ok:
            continue
        for repo_path, local in status.item.files:
            files.append(PlannedFile(status.item, repo_path, Path(models) / local))
    return files, statuses


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def resolve_metadata(files: list[PlannedFile]) -> None:
    """Size and checksum of each file from the server (HEAD requests)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    base, token, timeout = endpoint(), _token(), read_timeout()
    for f in files:
        source = f.item.source
        f.url = hf_hub_url(source.repo_id, f.repo_path, revision=source.revision, endpoint=base)
        try:
            meta = get_hf_file_metadata(f.url, token=token, endpoint=base, timeout=timeout)
        except Exception as err:  # noqa: BLE001 - httpx, HTTP status and OS errors all end the same way
            raise FetchError(f"cannot get {f.url}: {_short(err)}") from None
        f.size, f.etag = meta.size, meta.etag


def file_digest_matches(path: Path, etag: str | None) -> tuple[bool, str]:
    """Compare a downloaded file with the server's ETag: SHA-256 for LFS files, the git blob SHA-1
    for files kept in git. Unknown ETag formats are not compared (the model check still runs)."""
    if not etag:
        return True, "no checksum announced"
    etag = etag.strip('"').lower()
    if len(etag) == 64:
        digest = hashlib.sha256()
        kind = "sha256"
    elif len(etag) == 40:
        digest = hashlib.sha1()
        digest.update(b"blob %d\0" % path.stat().st_size)
        kind = "git sha1"
    else:
        return True, f"checksum format of {etag!r} unknown"
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    return actual == etag, f"{kind} {actual}" + ("" if actual == etag else f", server says {etag}")


def _staging_path(models: Path, dest: Path) -> Path:
    return Path(models) / STAGING / dest.relative_to(models)


class _Stalled(Exception):
    pass


def _stream(url: str, part: Path, resume: int, headers: dict) -> None:
    """GET `url` into `part` (appending from `resume` with a Range request), giving up after the
    read timeout or the stall limit; every byte received is on disk when it stops."""
    import httpx2
    from huggingface_hub.utils import get_session, hf_raise_for_status

    timeout, stall = read_timeout(), stall_seconds()
    if resume:
        headers = {**headers, "Range": f"bytes={resume}-"}
    with get_session().stream("GET", url, headers=headers, timeout=httpx2.Timeout(timeout)) as response:
        hf_raise_for_status(response)
        mode = "ab" if resume and response.status_code == 206 else "wb"  # a server may ignore the Range
        with open(part, mode) as handle:
            window_start, window_bytes = time.monotonic(), 0
            for chunk in response.iter_bytes():
                handle.write(chunk)
                window_bytes += len(chunk)
                now = time.monotonic()
                if now - window_start >= stall:
                    if window_bytes < STALL_BYTES:
                        raise _Stalled(f"the server sent only {window_bytes} bytes in {now - window_start:.0f} s")
                    window_start, window_bytes = now, 0


def download_file(models: Path, f: PlannedFile, log=print) -> Path:
    """Download `f` into the staging folder (resuming a `.part` file) and verify its checksum."""
    from huggingface_hub.utils import build_hf_headers

    done = _staging_path(models, f.dest)
    part = done.with_name(done.name + ".part")
    done.parent.mkdir(parents=True, exist_ok=True)
    if done.is_file() and (f.size is None or done.stat().st_size == f.size) and file_digest_matches(done, f.etag)[0]:
        return done
    resume = part.stat().st_size if part.is_file() else 0
    if f.size is not None and resume > f.size:
        part.unlink()
        resume = 0
    name = f"{f.item.source.repo_id}/{f.repo_path}"
    if not (f.size is not None and resume == f.size):
        if resume:
            log(f"  resuming {f.repo_path} at {format_size(resume)} of {format_size(f.size)}")
        try:
            _stream(f.url, part, resume, build_hf_headers(token=_token()))
        except FetchError:
            raise
        except OSError as err:  # the disk, not the network
            raise FetchError(f"download of {name} could not be written: {describe_os_error(err)}") from None
        except _Stalled as err:
            raise FetchError(f"download of {name} stalled ({err}); what arrived is kept") from None
        except Exception as err:  # noqa: BLE001 - network and HTTP errors; the .part file is kept for the next run
            import httpx2

            if isinstance(err, httpx2.TimeoutException):
                reason = f"no data from the server for {read_timeout():g} s"
            else:
                reason = _short(err)
            raise FetchError(f"download of {name} failed: {reason}") from None
    size = part.stat().st_size
    if f.size is not None and size != f.size:
        raise FetchError(f"download of {name} stopped at {format_size(size)} of {format_size(f.size)}")
    ok, detail = file_digest_matches(part, f.etag)
    if not ok:
        part.unlink()
        raise FetchError(f"{name} arrived corrupted ({detail}); it was deleted "
                         "and not installed - run the same command again")
    os.replace(part, done)
    return done


def _put_beside(staged: Path, dest: Path) -> tuple[Path, bool]:
    """Put a staged file next to `dest` under a hidden temporary name, on dest's own file system:
    renamed when staging and destination share one, else copied (the staged file then stays).
    Returns (temporary path, whether the staged file was moved)."""
    if dest.is_dir():
        raise FetchError(f"{dest} is a folder where the downloaded file should go; remove or rename it, then run "
                         "the same command again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    temporary = dest.with_name(f".{dest.name}.memo-fetch")
    try:
        os.replace(staged, temporary)
        return temporary, True
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
    try:
        shutil.copyfile(staged, temporary)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary, False


def install_item(models: Path, item: Item, files: list[PlannedFile]) -> str:
    """Check an item's downloaded files in the staging folder, then install them all or none."""
    models = Path(models)
    staged_item = _staging_path(models, models / item.dest)
    try:
        detail, _ = check_item_at(item, staged_item)
    except (FileProblem, OSError) as err:
        for f in files:
            _staging_path(models, f.dest).unlink(missing_ok=True)
        reason = describe_os_error(err) if isinstance(err, OSError) else _short(err)
        raise FetchError(f"{item.title}: the downloaded files do not load ({reason}); they were deleted and "
                         "not installed") from None
    # weights before configs: a loader that finds the config finds the weights too
    ordered = sorted(files, key=lambda f: f.dest.suffix in (".json", ".yaml"))
    placed: list[tuple[PlannedFile, Path, bool]] = []
    try:
        for f in ordered:
            temporary, moved = _put_beside(_staging_path(models, f.dest), f.dest)
            placed.append((f, temporary, moved))
    except (OSError, FetchError) as err:
        for f, temporary, moved in reversed(placed):  # undo: nothing of this item is installed
            try:
                if moved:
                    os.replace(temporary, _staging_path(models, f.dest))
                else:
                    temporary.unlink()
            except OSError:
                temporary.unlink(missing_ok=True)
        reason = str(err) if isinstance(err, FetchError) else describe_os_error(err)
        raise FetchError(f"{item.title} was not installed: {reason}") from None
    for f, temporary, moved in placed:
        os.replace(temporary, f.dest)  # same folder: atomic
        if not moved:
            _staging_path(models, f.dest).unlink(missing_ok=True)
    return detail


def _remove_empty_staging(models: Path) -> None:
    staging = models / STAGING
    try:
        if staging.is_dir() and not any(p.is_file() for p in staging.rglob("*")):
            shutil.rmtree(staging, ignore_errors=True)
    except OSError:
        pass


def _prepare_staging(models: Path) -> None:
    """Make sure downloads can be stored before anything is downloaded (a read-only disk, a file
    where the folder should be): raises FetchError with one line."""
    staging = models / STAGING
    try:
        if models.exists() and not models.is_dir():
            raise FetchError(f"{models} is a file, not a models folder")
        if staging.exists() and not staging.is_dir():
            raise FetchError(f"{staging} is a file where fetch keeps its downloads; remove it, then run again")
        staging.mkdir(parents=True, exist_ok=True)
        probe = staging / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise FetchError(f"cannot store downloads in {staging}: {describe_os_error(err)}") from None


def _confirm(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def fetch(models: str | os.PathLike, features=FEATURES, assume_yes: bool = False, log=print) -> int:
    """The `models fetch` command. Returns the exit code (0: everything asked for is installed)."""
    models = Path(models)
    files, statuses = plan(models, features)
    if not files:
        log(f"nothing to fetch: everything for {', '.join(features)} is in {models} and loads")
        return 0
    try:
        _prepare_staging(models)
    except FetchError as err:
        log(f"error: {err} (nothing was downloaded)")
        return 1
    try:
        from huggingface_hub import close_session

        close_session()  # a fresh HTTP client, so this run's proxy variables apply
        try:
            resolve_metadata(files)
        except FetchError as err:
            log(f"error: {err} (nothing was downloaded; check the network, HF_ENDPOINT and proxy settings)")
            return 1
        total = sum(f.size or 0 for f in files)
        log(f"will download {len(files)} files, {format_size(total)} in total, into {models}:")
        for f in files:
            log(f"  {format_size(f.size):>10s}  {f.item.source.repo_id}/{f.repo_path} -> {f.dest.relative_to(models)}")
        sources = {f.item.source for f in files}
        for source in sorted(sources, key=lambda s: s.repo_id):
            log(f"  licence of {source.repo_id}: {source.licence} ({source.page})")
        if not assume_yes and not _confirm("continue? [y/N] "):
            log("nothing downloaded")
            return 1
        by_item: dict[str, list[PlannedFile]] = {}
        for f in files:
            by_item.setdefault(f.item.key, []).append(f)
        installed = []
        for key, item_files in by_item.items():
            item = item_files[0].item
            try:
                for f in item_files:
                    download_file(models, f, log)
                detail = install_item(models, item, item_files)
            except FetchError as err:
                kept = f"; installed so far: {', '.join(installed)}" if installed else ""
                log(f"error: {err}{kept}. Run the same command again to continue.")
                return 1
            installed.append(item.title)
            log(f"installed {item.title} in {models / item.dest} ({detail})")
    finally:
        _remove_empty_staging(models)
    from .model_files import check_models, format_report

    report = check_models(models, features)
    log(format_report(report, verbose=False))
    return 0 if all(s.ok for s in report.items) else 1


def main_fetch(models: Path, only: str | None, assume_yes: bool) -> int:
    features = (only,) if only else FEATURES
    try:
        return fetch(models, features, assume_yes)
    except FetchError as err:
        print(f"error: {err}")
        return 1
    except OSError as err:  # the disk: read-only, full, a file where a folder should be
        print(f"error: {describe_os_error(err)}; finished downloads are kept, run the same command again")
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished files are kept, run the same command again to continue", file=sys.stderr)
        return 130
