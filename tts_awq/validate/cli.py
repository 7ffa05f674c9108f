"""``validate-awq OUT --reference SRC ...``: argument parsing and exit codes (0 pass, 1 a gate failed, 2 bad input, 3 internal error, 4 OS error)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tts_awq.cli_types import int_at_least
from tts_awq.constants import ENGINES
from tts_awq.validate.plan import DEFAULT_PROFILE, PROFILES
from tts_awq.validate.spawn import helper_argv, helpers_for

EXIT_PASS = 0
EXIT_GATE_FAILED = 1


def add_validate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="INT4 package directory written by quantize-talker")
    parser.add_argument("--reference", required=True, metavar="SRC",
                        help="the checkpoint the package was made from (dir or Hub id); a tts-awq package works too")
    parser.add_argument("--eval", default=None, metavar="FILE|DATASET",
                        help="held-out prompts: JSONL file or Hub dataset id (default: built-in calib_data/eval.jsonl)")
    sizes = ", ".join(f"{p.name} {p.n_prompts}x{p.seeds}" for p in PROFILES.values())
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=list(PROFILES),
                        help=f"run size, prompts x seeds ({sizes}); also sets the runaway gate's default")
    parser.add_argument("--seeds", type=int_at_least(1), default=None,
                        help="generations per prompt, one seed each (default: the profile's)")
    parser.add_argument("--max-new-tokens", type=int_at_least(3, "qwen-tts generates at least 2 codec frames"),
                        default=None, help="codec frames a generation may use before it counts as a runaway "
                                           "(default: the profile's)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=1,
                        help="jobs decoded together per model (faster; with --engine fast the results do not "
                             "depend on it)")
    parser.add_argument("--engine", default=ENGINES[0], choices=list(ENGINES),
                        help="talker decode loop: fast = tts-awq's loop, per-job draws, continuous batching; "
                             "exact = the same loop drawing like qwen-tts (identical codes to qwen-tts); "
                             "qwen-tts = its own generate")
    parser.add_argument("--gates", default=None, metavar="FILE", help="YAML or JSON file overriding gate thresholds")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--n-prompts", type=int_at_least(1), default=None,
                        help="use this many prompts, spread over the file (default: the profile's)")
    parser.add_argument("--asr-model", default=None, metavar="DIR",
                        help="local ASR model (transformers Whisper or faster-whisper dir) for WER/CER")
    parser.add_argument("--workers", type=int_at_least(1), default=1,
                        help="processes sharing the run on this machine (one per GPU with --device cuda; on "
                             "CPU each gets cores/N threads); no launcher needed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with helpers_for(["-m", "tts_awq.validate", *helper_argv(args)], args.workers):
        from tts_awq.validate.runner import validate_package

        result = validate_package(args.out, args.reference, eval=args.eval, seeds=args.seeds,
                                  max_new_tokens=args.max_new_tokens, gates=args.gates, device=args.device,
                                  asr_model=args.asr_model, n_prompts=args.n_prompts, profile=args.profile,
                                  batch_size=args.batch_size, engine=args.engine, workers=args.workers)
    if result is None:  # a non-main worker of a multi-process run: rank 0 writes the report
        return EXIT_PASS
    verdict = "PASS" if result.passed else "FAIL (" + ", ".join(result.failed_gates) + ")"
    print(f"{verdict}: {result.markdown_path}", file=sys.stdout)
    return EXIT_PASS if result.passed else EXIT_GATE_FAILED
