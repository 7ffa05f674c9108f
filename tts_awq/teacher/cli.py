"""``tts-awq teacher PKG --data DATA --out DIR``: argument parsing; ``--workers N`` starts helper processes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tts_awq.cli_types import int_at_least
from tts_awq.constants import DEFAULT_SEED
from tts_awq.validate.spawn import helpers_for


def add_teacher(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("package", metavar="PKG",
                        help="validated tts-awq package (or a dense Qwen3-TTS checkpoint), dir or Hub id")
    parser.add_argument("--data", required=True, metavar="FILE|DATASET",
                        help="JSONL/JSON/CSV/parquet file or Hub dataset id: text, lang, ref_audio (or audio), "
                             "optional ref_text, seed, codes (16 x T, teacher-forced instead of sampled)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset directory (resumable)")
    parser.add_argument("--k", type=int_at_least(1), default=64, help="talker top-k per frame (default 64)")
    parser.add_argument("--k-cp", type=int_at_least(1), default=None,
                        help="code predictor top-k per codebook 1-15 (default: --k)")
    parser.add_argument("--hidden", action="store_true", help="also store the talker's last hidden state (fp16)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="row seed = --seed + row position "
                                                                      "(a 'seed' column overrides it)")
    parser.add_argument("--retries", type=int_at_least(0), default=2,
                        help="resamples (next seed) of a row that runs past its frame budget")
    parser.add_argument("--max-new-tokens", type=int_at_least(3), default=2048,
                        help="cap on every row's frame budget")
    parser.add_argument("--batch-size", type=int_at_least(1), default=8, help="rows decoded together")
    parser.add_argument("--rows-per-shard", type=int_at_least(1), default=256, help="rows per parquet shard")
    parser.add_argument("--split", default="train", help="split of a Hub dataset")
    parser.add_argument("--revision", default=None, help="revision of a Hub dataset")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--allow-unvalidated", action="store_true",
                        help="use a package without a passing validate-awq report (recorded in provenance.json)")
    parser.add_argument("--workers", type=int_at_least(1), default=1,
                        help="processes sharing the shards on this machine (one per GPU with --device cuda)")
    parser.set_defaults(func=run)


def helper_argv(args: argparse.Namespace) -> list[str]:
    argv = ["-m", "tts_awq.cli", "teacher", str(args.package), "--data", str(args.data), "--out", str(args.out),
            "--k", str(args.k), "--seed", str(args.seed), "--retries", str(args.retries), "--max-new-tokens",
            str(args.max_new_tokens), "--batch-size", str(args.batch_size), "--rows-per-shard",
            str(args.rows_per_shard), "--split", args.split, "--device", args.device]
    for flag, value in (("--k-cp", args.k_cp), ("--revision", args.revision)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + [flag for flag, on in (("--hidden", args.hidden), ("--allow-unvalidated", args.allow_unvalidated))
                   if on]


def run(args: argparse.Namespace) -> int:
    with helpers_for(helper_argv(args), args.workers):
        from tts_awq.teacher.run import TeacherOptions, write_teacher

        out = write_teacher(TeacherOptions(
            package=args.package, data=args.data, out=args.out, k=args.k, k_cp=args.k_cp, hidden=args.hidden,
            seed=args.seed, retries=args.retries, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            rows_per_shard=args.rows_per_shard, device=args.device, allow_unvalidated=args.allow_unvalidated,
            split=args.split, revision=args.revision, workers=args.workers))
    if out is not None:
        print(out, file=sys.stdout)
    return 0
