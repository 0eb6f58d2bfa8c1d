"""`python -m memo_pipeline models check|fetch`: the command-line side of model_files / model_fetch."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .model_files import FEATURES

set_aside_endpoint: str | None = None
"""An HF_ENDPOINT value that `set_aside_invalid_endpoint` removed from the environment."""


def hf_endpoint_problem(value: str) -> str | None:
    """Why `value` cannot be a Hugging Face endpoint URL (None when it can)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises for a port out of range or not a number
    except ValueError as err:
        return str(err)
    if parts.scheme not in ("http", "https"):
        return "it must start with http:// or https://"
    if not parts.hostname:
        return "it names no host"
    return None


def set_aside_invalid_endpoint() -> None:
    """Remove an invalid HF_ENDPOINT from this process's environment before huggingface_hub is
    imported (it parses the variable at import time and would stop every command, though only
    `models fetch` uses the network). `models fetch` reports it; other commands warn once."""
    global set_aside_endpoint
    value = os.environ.get("HF_ENDPOINT")
    if not value:
        return
    problem = hf_endpoint_problem(value)
    if problem is None:
        return
    set_aside_endpoint = os.environ.pop("HF_ENDPOINT")
    import sys

    if sys.argv[1:3] != ["models", "fetch"]:
        print(f"warning: ignoring HF_ENDPOINT={value!r} ({problem}); this command needs no network", file=sys.stderr)


def add_parser(sub) -> None:
    models = sub.add_parser("models", help="check which model files are present and load, or download them")
    actions = models.add_subparsers(dest="models_command", required=True)
    for name, text in (("check", "report found / missing / unusable model files per feature (no network)"),
                       ("fetch", "download the missing model files from Hugging Face (asks first)")):
        cmd = actions.add_parser(name, help=text, description=text)
        where = cmd.add_mutually_exclusive_group()
        where.add_argument("--comfyui", type=Path, help="ComfyUI folder: its models/ folder is used")
        where.add_argument("--models", type=Path,
                           help="a models folder in ComfyUI's layout, or a Hugging Face cache folder (default: ./models)")
        if name == "fetch":
            cmd.add_argument("--only", choices=FEATURES, help="fetch only the files of one feature")
            cmd.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        else:
            cmd.add_argument("--quiet", action="store_true", help="only the one-line summary per feature")


def models_folder(args: argparse.Namespace) -> Path:
    if args.comfyui is not None:
        if not args.comfyui.is_dir():
            raise SystemExit(f"error: ComfyUI folder {args.comfyui} does not exist")
        return args.comfyui / "models"
    return args.models if args.models is not None else Path("models")


def run(args: argparse.Namespace) -> int:
    # library warnings (e.g. ignored config keys) would only clutter the report
    logging.getLogger().setLevel(logging.ERROR)
    models = models_folder(args)
    if models.exists() and not models.is_dir():
        print(f"error: {os.fspath(models)} is a file, not a models folder; pass --comfyui DIR or --models DIR")
        return 2
    if args.models_command == "check":
        from .model_files import check_models, describe_os_error, format_report

        if not models.is_dir():
            print(f"model folder {os.fspath(models)} does not exist; pass --comfyui DIR or --models DIR")
            return 2
        try:
            report = check_models(models)
        except OSError as err:
            print(f"error: cannot read the models folder: {describe_os_error(err)}")
            return 1
        print(format_report(report, verbose=not args.quiet))
        return report.exit_code
    from .model_fetch import main_fetch

    return main_fetch(models, args.only, args.yes)
