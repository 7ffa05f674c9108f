"""Command line: ``tts-awq <command>``, plus ``quantize-talker`` and ``validate-awq`` as their own names.

A thin layer over the library: parse, call one function, turn a UserError into one line and an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tts_awq import __version__
from tts_awq.cli_types import OneLineParser, float_in, int_at_least
from tts_awq.constants import DEFAULT_SEED
from tts_awq.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OS,
    EXIT_TERMINATED,
    Terminated,
    UserError,
    describe_os_error,
)

log = logging.getLogger("tts_awq")


def _quantize_defaults() -> dict[str, Any]:
    """Every ``QuantizeOptions`` field's default (the one place they are written down)."""
    from tts_awq.quantize.pipeline import QuantizeOptions

    return {f.name: f.default for f in dataclasses.fields(QuantizeOptions) if f.default is not dataclasses.MISSING}


def _add_quantize(p: argparse.ArgumentParser) -> None:
    from tts_awq.quantize.engine import METHODS as QUANT_METHODS

    d = _quantize_defaults()
    p.add_argument("src", help="Qwen3-TTS checkpoint directory or Hub repo id (or a Llama/Qwen2/Qwen3 causal LM)")
    p.add_argument("out", type=Path, help="output package directory (written atomically)")
    p.add_argument("--group-size", type=int_at_least(2), default=d["group_size"])
    p.add_argument("--w-bit", type=int, default=d["w_bit"], choices=[4], help="only 4 is storable in the AWQ GEMM format")
    p.add_argument("--method", default=d["method"], choices=list(QUANT_METHODS), help="awq-gptq: AWQ scales and clipping, then error-compensating rounding; awq: AWQ, round-to-nearest; gptq: error-compensating rounding only; rtn: round-to-nearest baseline")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--seq-len", type=int_at_least(2, "qwen-tts generates at least 2 codec frames per prompt"),
                   default=d["seq_len"], help="cap on each calibration sequence (talker rows)")
    p.add_argument("--n-samples", type=int_at_least(1), default=d["n_samples"], help="number of calibration prompts")
    p.add_argument("--calib", default=d["calib"], help="JSONL file or Hub dataset id (default: built-in calib_data)")
    p.add_argument("--calib-batch-size", type=int_at_least(1), default=d["calib_batch_size"])
    p.add_argument("--device", default=d["device"], help="auto | cpu | cuda[:N]")
    p.add_argument("--codec-from", default=d["codec_from"], metavar="BASE",
                   help="copy a missing speech_tokenizer/ from this base checkpoint (architecture checked)")
    p.add_argument("--revision", default=d["revision"], help="Hub revision of SRC")
    p.add_argument("--max-shard-size", type=float_in(0.0, 1e6, low_open=True),
                   default=d["max_shard_bytes"] / (1 << 30), help="GiB per safetensors shard")
    p.add_argument("--no-clip", action="store_true", help="skip the weight-clip search")
    p.add_argument("--keep-bf16", nargs="+", action="extend", default=list(d["keep_bf16"]), metavar="FILE|GLOB",
                   help="decoder linears to keep dense: a text file of module names (one per line, # comments; "
                        "validate-awq's validation/keep_bf16.txt) or fnmatch patterns over full names "
                        "(e.g. '*.layers.0.mlp.*'); may be repeated")
    p.add_argument("--keep-bf16-budget", type=float_in(0.0, 1e9), default=d["keep_bf16_budget_mb"], metavar="MB",
                   help="also keep the linears most sensitive to INT4 (a scan on the calibration activations) "
                        "dense, within this many MB (10^6 bytes) over all-INT4")
    p.add_argument("--keep-bf16-fused", action="store_true",
                   help="keep vLLM's fused groups together: when one of q/k/v (or gate/up) stays dense, so do the "
                        "others (a compressed-tensors export for vLLM needs this)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed run of the same command from its .OUT.partial-* directory")
    p.set_defaults(func=_run_quantize)


def _quantize_options(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The parsed command line as ``QuantizeOptions``."""
    from tts_awq.quantize.pipeline import QuantizeOptions

    return QuantizeOptions(
        src=args.src, out=args.out, group_size=args.group_size, w_bit=args.w_bit, method=args.method,
        seed=args.seed, seq_len=args.seq_len, n_samples=args.n_samples, calib=args.calib,
        calib_batch_size=args.calib_batch_size, device=args.device, overwrite=args.overwrite,
        codec_from=args.codec_from, revision=args.revision, max_shard_bytes=int(args.max_shard_size * (1 << 30)),
        clip=not args.no_clip, resume=args.resume, keep_bf16=tuple(args.keep_bf16),
        keep_bf16_budget_mb=args.keep_bf16_budget, keep_bf16_fused=args.keep_bf16_fused,
    )


def _run_quantize(args: argparse.Namespace) -> int:
    from tts_awq.quantize.pipeline import quantize_talker

    print(quantize_talker(_quantize_options(args)))
    return 0


def _add_requantize(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="the checkpoint the package was quantized from (dir or Hub id)")
    p.add_argument("state", type=Path, help="the package's search_state.safetensors")
    p.add_argument("out", type=Path, help="output package directory (written atomically)")
    p.add_argument("--codec-from", default=None, metavar="BASE", help="as for quantize-talker")
    p.add_argument("--max-shard-size", type=float_in(0.0, 1e6, low_open=True),
                   default=_quantize_defaults()["max_shard_bytes"] / (1 << 30), help="GiB per safetensors shard")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=_run_requantize)


def _run_requantize(args: argparse.Namespace) -> int:
    from tts_awq.quantize.requantize import requantize_package

    print(requantize_package(args.src, args.state, args.out, overwrite=args.overwrite, codec_from=args.codec_from,
                             max_shard_bytes=int(args.max_shard_size * (1 << 30))))
    return 0


def _add_blend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tts", required=True, help="Qwen3-TTS checkpoint (dir or Hub id)")
    p.add_argument("--llm", required=True, help="Qwen3 causal LM whose FFN is lerped in (dir or Hub id)")
    p.add_argument("--alpha", nargs="+", required=True, metavar="A",
                   help="one value, or several for a sweep; OUT may follow the values (--alpha 0.03 OUT)")
    p.add_argument("out", type=Path, nargs="?", metavar="OUT")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_run_blend)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _run_blend(args: argparse.Namespace) -> int:
    from tts_awq.upstream.blend import blend_ffn, blend_sweep, check_alpha

    if args.out is None and len(args.alpha) >= 2 and not _is_number(args.alpha[-1]):
        args.out = Path(args.alpha.pop())  # `--alpha 0.03 OUT`: argparse gave OUT to the greedy --alpha
    if args.out is None:
        raise UserError("blend: OUT is missing; pass the output directory, e.g. `--alpha 0.03 darwin-3`")
    args.alpha = [check_alpha(a) for a in args.alpha]

    if len(args.alpha) == 1:
        print(blend_ffn(args.tts, args.llm, args.alpha[0], args.out, overwrite=args.overwrite))
    else:
        for path in blend_sweep(args.tts, args.llm, args.alpha, args.out, overwrite=args.overwrite):
            print(path)
    return 0


def _add_repack(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="checkpoint lacking speech_tokenizer/ (dir or Hub id)")
    p.add_argument("--codec-from", required=True, metavar="BASE", help="base checkpoint with the codec")
    p.add_argument("out", type=Path)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_run_repack)


def _run_repack(args: argparse.Namespace) -> int:
    from tts_awq.upstream.repack import repack_codec

    print(repack_codec(args.src, args.codec_from, args.out, overwrite=args.overwrite))
    return 0


def _add_merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="base checkpoint directory or .pth file")
    from tts_awq.upstream.merge import parse_model_spec

    p.add_argument("--model", action="append", required=True, type=parse_model_spec, metavar="PATH:WEIGHT")
    p.add_argument("out", type=Path)
    from tts_awq.upstream.merge_methods import METHODS as MERGE_METHODS

    p.add_argument("--method", default="task_arithmetic", choices=sorted(MERGE_METHODS))
    p.add_argument("--density", type=float_in(0.0, 1.0, low_open=True), default=None, help="kept fraction (0,1] for ties / dare_linear (0.5)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="linear / ties: divide by the sum of weights (default on)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="DARE drop mask seed")
    p.add_argument("--unmatched", default="error", help="error | drop | keep:NAME (NAME = base or a --model PATH)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_run_merge)


def _run_merge(args: argparse.Namespace) -> int:
    from tts_awq.upstream.merge import merge_checkpoints

    print(merge_checkpoints(args.base, args.model, args.out, method=args.method, density=args.density,
                            seed=args.seed, unmatched=args.unmatched, overwrite=args.overwrite,
                            normalize=args.normalize))
    return 0


def _add_validate(p: argparse.ArgumentParser) -> None:
    from tts_awq.validate.cli import add_validate

    add_validate(p)


def _add_push(p: argparse.ArgumentParser) -> None:
    from tts_awq.publish.cli import add_push

    add_push(p)


def _add_teacher(p: argparse.ArgumentParser) -> None:
    from tts_awq.teacher.cli import add_teacher

    add_teacher(p)


def _add_speak(p: argparse.ArgumentParser) -> None:
    from tts_awq.speak.cli import add_speak

    add_speak(p)


def _add_export(p: argparse.ArgumentParser) -> None:
    from tts_awq.export.cli import add_export

    add_export(p)


COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], str]] = {
    "quantize-talker": (_add_quantize, "quantize a TTS talker (or causal LM) to AWQ INT4"),
    "requantize": (_add_requantize, "rebuild a package from its source and search_state.safetensors (no calibration)"),
    "blend": (_add_blend, "Darwin-style FFN blend of a Qwen3 LLM into a Qwen3-TTS talker"),
    "repack": (_add_repack, "add a missing speech_tokenizer/ from a base checkpoint"),
    "merge": (_add_merge, "task-arithmetic / TIES / DARE / linear merge of checkpoints"),
    "validate-awq": (_add_validate, "quality report with pass/fail gates (exit 0 pass, 1 gate failed, 2 error)"),
    "push": (_add_push, "push a validated package to the Hugging Face Hub with a model card"),
    "teacher": (_add_teacher, "distillation targets (codes + top-k log-probs) as a datasets-readable parquet set"),
    "speak": (_add_speak, "synthesize a script, one WAV per line, with a runaway guard"),
}
COMMANDS["export"] = (_add_export, "export a validated package for mlx-audio (mlx), llama.cpp (gguf) or vLLM "
                                   "(compressed-tensors), checked lossless")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    if only is not None:
        add, help_text = COMMANDS[only]
        parser = OneLineParser(prog=only, description=help_text)
        add(parser)
        parser.add_argument("-v", "--verbose", action="store_true")
        parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
        return parser
    parser = OneLineParser(prog="tts-awq", description="INT4 packages of LLM-based TTS that still speak")
    parser.add_argument("--version", action="version", version=f"tts-awq {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add, help_text) in COMMANDS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _debug(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("TTS_AWQ_DEBUG", "") not in ("", "0")


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise Terminated()


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "accelerate", "sox", "datasets", "huggingface_hub", "urllib3", "numba"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    previous = signal.getsignal(signal.SIGTERM)
    with contextlib.suppress(ValueError):  # not in the main thread (e.g. some test runners): keep the default
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; no output was written (temporary files removed)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("error: terminated (SIGTERM); no output was written (temporary files removed)", file=sys.stderr)
        return EXIT_TERMINATED
    except OSError as exc:
        if _debug(args):
            raise
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_OS
    except Exception as exc:  # noqa: BLE001 - the one place that turns a crash into one line
        if _debug(args):
            raise
        where = exc.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        site = f" at {Path(where.tb_frame.f_code.co_filename).name}:{where.tb_lineno}" if where else ""
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(f"error: internal error: {type(exc).__name__}{site}: {message}; rerun with --debug (or "
              "TTS_AWQ_DEBUG=1) for the traceback and report it", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    return _run(build_parser(), argv)


def quantize_talker_main(argv: Sequence[str] | None = None) -> int:
    return _run(build_parser("quantize-talker"), argv)


def validate_awq_main(argv: Sequence[str] | None = None) -> int:
    return _run(build_parser("validate-awq"), argv)


if __name__ == "__main__":
    sys.exit(main())
