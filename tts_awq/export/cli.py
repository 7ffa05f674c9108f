"""``tts-awq export PKG OUT --to FORMAT``: registered by tts_awq.cli through :func:`add_export`."""

from __future__ import annotations

import argparse
from pathlib import Path

from tts_awq.export.registry import FORMATS, load_formats


def add_export(parser: argparse.ArgumentParser) -> None:
    load_formats()
    parser.add_argument("package", type=Path, help="package directory written by quantize-talker (and validate-awq)")
    parser.add_argument("out", type=Path, help="output directory (written atomically)")
    parser.add_argument("--to", required=True, choices=sorted(FORMATS),
                        help="; ".join(f"{f.name}: {f.summary}" for f in sorted(FORMATS.values(), key=lambda f: f.name)))
    parser.add_argument("--allow-unvalidated", action="store_true",
                        help="export a package without a passing validation report (its card then says so)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export OUT")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tts_awq.export.stage import ExportOptions, export_package

    print(export_package(ExportOptions(package=args.package, out=args.out, to=args.to,
                                       allow_unvalidated=args.allow_unvalidated, overwrite=args.overwrite)))
    return 0
