"""``tts-awq push OUT --repo-id NAME``: registered by tts_awq.cli through :func:`add_push`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tts_awq.publish.upload import PushOptions, push


def add_push(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="package directory written by quantize-talker (and validate-awq)")
    parser.add_argument("--repo-id", required=True, help="target Hub model repo, OWNER/NAME")
    parser.add_argument("--private", action="store_true", help="create the repo private (only when it is created)")
    parser.add_argument("--revision", default=None, help="branch to push to (created from main if missing)")
    parser.add_argument("--create-pr", action="store_true",
                        help="open a pull request instead of committing to the branch (also allowed on a repo "
                             "that holds another model)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the file list, total size and the model card; send nothing")
    parser.add_argument("--allow-unvalidated", action="store_true",
                        help="push without a passing validation report; the card then carries a warning")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="upload pickle files (pytorch_model.bin, *.pt, ...) the package holds; refused by default "
                             "(loading a pickle can run code)")
    parser.add_argument("--endpoint", default=None, help="Hub endpoint URL (default: HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--base-model", default=None, metavar="OWNER/NAME",
                        help="card base_model when the source is a local directory (default: the source's Hub id)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = PushOptions(
        package=args.out, repo_id=args.repo_id, private=args.private, revision=args.revision,
        create_pr=args.create_pr, dry_run=args.dry_run, allow_unvalidated=args.allow_unvalidated,
        allow_pickle=args.allow_pickle,
        endpoint=args.endpoint, base_model=args.base_model,
    )
    result = push(options)
    plan = result.plan
    if options.dry_run:
        print(plan.render(options))
        return 0
    for warning in plan.card.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not plan.package.validated:
        print(f"warning: pushed NOT VALIDATED ({plan.package.validation_problem}); the card says so", file=sys.stderr)
    for note in result.notes:
        print(note, file=sys.stderr)
    if result.deleted:
        print(f"removed {len(result.deleted)} stale file(s) from the branch: {', '.join(result.deleted)}",
              file=sys.stderr)
    print(f"pushed {len(plan.files)} files ({plan.total_bytes:,} bytes) to {options.repo_id}")
    print(result.pr_url or result.commit_url or options.repo_id)
    return 0
