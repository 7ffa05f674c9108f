#!/usr/bin/env python
"""Build the tiny random checkpoints (tiny-tts-base, tiny-qwen3-lm, tiny-darwin) under OUT_ROOT.

    python scripts/make_tiny_checkpoint.py OUT_ROOT [--seed N] [--alpha A]

Logs go to stderr; the three directories are printed on stdout, one per line. An existing build with the same
seed and alpha is reused.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tts_awq.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_root", type=Path, metavar="OUT_ROOT", help="directory that receives the three checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TTS model (the LM uses seed + 1); default 0")
    parser.add_argument("--alpha", type=float, default=0.03, help="FFN blend weight of the LLM; default 0.03")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("qwen_tts", "transformers", "httpx"):  # qwen-tts logs every default sub-config at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from tts_awq.tiny import build_tiny_darwin

    start = time.perf_counter()
    try:
        paths = build_tiny_darwin(args.out_root, seed=args.seed, alpha=args.alpha)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    logging.getLogger("make_tiny_checkpoint").info("done in %.1fs", time.perf_counter() - start)
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
