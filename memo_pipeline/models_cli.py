"""`python -m memo_pipeline models check|fetch`: the command-line side of model_files / model_fetch."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .model_files import FEATURES


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
    if args.models_command == "check":
        from .model_files import check_models, format_report

        if not models.is_dir():
            print(f"model folder {os.fspath(models)} does not exist; pass --comfyui DIR or --models DIR")
            return 2
        report = check_models(models)
        print(format_report(report, verbose=not args.quiet))
        return report.exit_code
    from .model_fetch import main_fetch

    return main_fetch(models, args.only, args.yes)
