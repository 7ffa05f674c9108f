"""``tts-awq speak MODEL (--text TEXT | --script FILE) --ref-audio WAV [--ref-text TEXT] --out DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tts_awq.cli_types import int_at_least
from tts_awq.constants import DEFAULT_SEED


def add_speak(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="tts-awq package or dense Qwen3-TTS checkpoint (dir or Hub id)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="one line to speak")
    what.add_argument("--script", metavar="FILE",
                      help="text file (one line each), CSV, JSONL or parquet with text and optional lang, voice "
                           "(or ref_audio), ref_text, seed, id")
    parser.add_argument("--ref-audio", metavar="WAV", help="voice of the lines that name none")
    parser.add_argument("--ref-text", default="", help="transcript of --ref-audio (ICL voice cloning; without it: "
                                                       "x-vector only)")
    parser.add_argument("--lang", default=None, help="language of lines without one (default auto)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (written atomically)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="line seed = --seed + line position "
                                                                      "(a 'seed' column overrides it)")
    parser.add_argument("--retries", type=int_at_least(0), default=2,
                        help="resamples (next seed) of a line that runs past its frame budget")
    parser.add_argument("--max-new-tokens", type=int_at_least(3), default=2048, help="cap on every line's budget")
    parser.add_argument("--batch-size", type=int_at_least(1), default=8, help="lines decoded together")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing speak OUT")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tts_awq.speak.run import SpeakOptions, speak

    result = speak(SpeakOptions(model=args.model, out=args.out, text=args.text, script=args.script,
                                ref_audio=args.ref_audio, ref_text=args.ref_text, lang=args.lang, seed=args.seed,
                                retries=args.retries, max_new_tokens=args.max_new_tokens,
                                batch_size=args.batch_size, device=args.device, overwrite=args.overwrite))
    print(f"speak: {result.lines} lines, {result.seconds:.1f} s of audio; {result.resampled} resampled after a "
          f"runaway, {result.runaways} still over budget after --retries (kept, stopped=false in manifest.jsonl)",
          file=sys.stderr)
    print(result.out)
    return 0
