"""End-to-end demo on the built-in tiny checkpoint: build -> quantize-talker -> load_quantized -> WAV ->
validate-awq (quick profile).

Runs on a CPU in a few minutes; everything lands under --out (default demo_out/).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import soundfile as sf
import torch

import tts_awq
from tts_awq.constants import DEFAULT_SEED
from tts_awq.prompts import load_voice_clips, read_voice
from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker
from tts_awq.testing.tiny import build_tiny_darwin
from tts_awq.validate import validate_package

#: The random tiny talker is no real TTS model: its free-running lengths are noise (it rarely stops by itself),
#: so the demo checks the teacher-forced fidelity gates only, at thresholds measured for it (tests/test_validate.py).
TINY_GATES = {"runaway_excess_upper95": None, "median_duration_ratio": None, "speaker_similarity_drop": None,
              "stop_signal_ratio": None, "teacher_top1": 0.7, "kl_mean": 0.005}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=96)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    for noisy in ("transformers", "qwen_tts", "sox", "datasets"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    log = logging.getLogger("demo")

    start = time.perf_counter()
    paths = build_tiny_darwin(args.out / "checkpoints")
    log.info("tiny checkpoints: %s", ", ".join(str(p) for p in paths.values()))
    package = quantize_talker(QuantizeOptions(src=str(paths["tiny-darwin"]), out=args.out / "tiny-darwin-awq",
                                              group_size=128, n_samples=args.n_samples, seq_len=args.seq_len,
                                              device=args.device, overwrite=True))
    log.info("INT4 package: %s", package)
    tts = tts_awq.load_quantized(package, device="cuda" if args.device == "cuda" else "cpu")
    clip = load_voice_clips()[0]
    wav, sr = read_voice(clip)
    torch.manual_seed(DEFAULT_SEED)
    wavs, out_sr = tts.generate_voice_clone(text="Hello from a four-bit talker.", language="english",
                                            ref_audio=(wav, sr), x_vector_only_mode=True, max_new_tokens=48)
    wav_path = args.out / "tiny-darwin-awq.wav"
    sf.write(wav_path, wavs[0], out_sr)
    report = validate_package(package, paths["tiny-darwin"], profile="quick", max_new_tokens=48, batch_size=4,
                              gates=TINY_GATES, device="cuda" if args.device == "cuda" else "cpu")
    log.info("done in %.0f s", time.perf_counter() - start)
    print(f"checkpoints : {args.out / 'checkpoints'}")
    print(f"INT4 package: {package}  (provenance: {package / 'provenance.json'})")
    print(f"validation  : {'PASS' if report.passed else 'FAIL'} {report.markdown_path}")
    print(f"audio       : {wav_path}  ({len(wavs[0]) / out_sr:.2f} s at {out_sr} Hz; random tiny weights, so it is noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
