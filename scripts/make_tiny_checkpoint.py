#!/usr/bin/env python
"""Build the random checkpoints (TTS base, Qwen3 LM, Darwin blend) of a size preset under OUT_ROOT.

    python scripts/make_tiny_checkpoint.py OUT_ROOT [--preset tiny|1.7b] [--seed N] [--alpha A]

Presets (tts_awq/testing/presets.py):

* ``tiny`` (default): tiny-tts-base, tiny-qwen3-lm, tiny-darwin (~50 MB, seconds).
* ``1.7b``: random-1.7b-tts-base, random-1.7b-qwen3-lm, random-1.7b-darwin with exactly the shapes of
  Qwen3-TTS-12Hz-1.7B-Base (talker, code predictor, speaker encoder: 1928.7 M params, 3.86 GB BF16) and of
  Qwen3-1.7B (tied embeddings, 2 shards); random BF16 weights written one tensor at a time, so peak memory stays
  near one tensor. About 11 GB on disk. The codec (speech_tokenizer/) is the tiny random codec in every preset:
  the real 12 Hz codec's dimensions are not documented.

Logs go to stderr; the three directories are printed on stdout, one per line. An existing build with the same
preset, seed and alpha is reused.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # an installed tts_awq wins

from tts_awq.errors import UserError  # noqa: E402
from tts_awq.testing.presets import CODEC_NOTE, PRESETS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_root", type=Path, metavar="OUT_ROOT", help="directory that receives the three checkpoints")
    parser.add_argument("--preset", default="tiny", metavar="|".join(PRESETS),
                        help="checkpoint sizes: tiny (default) or 1.7b (Qwen3-TTS-12Hz-1.7B-Base shapes, ~11 GB)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TTS model (the LM uses seed + 1); default 0")
    parser.add_argument("--alpha", type=float, default=0.03, help="FFN blend weight of the LLM; default 0.03")
    args = parser.parse_args(argv)
    if args.preset not in PRESETS:
        print(f"error: unknown --preset {args.preset!r}; choose one of {', '.join(PRESETS)}", file=sys.stderr)
        return 2

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("qwen_tts", "transformers", "httpx"):  # qwen-tts logs every default sub-config at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("make_tiny_checkpoint")

    from tts_awq.testing.tiny import build_darwin

    if args.preset != "tiny":
        log.info("preset %s: %s", args.preset, CODEC_NOTE)
    start = time.perf_counter()
    try:
        paths = build_darwin(args.out_root, seed=args.seed, alpha=args.alpha, preset=args.preset)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    log.info("done in %.1fs", time.perf_counter() - start)
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
