#!/usr/bin/env python3
"""Generate the reference voice clips in ``calib_data/voices/`` for voice-clone calibration and evaluation.

Each clip is one short sentence spoken by espeak-ng, converted by sox to 24000 Hz mono 16-bit PCM WAV
(leading/trailing silence trimmed, peak-normalised, no dither so the output is byte-for-byte reproducible).
``voices.json`` lists every clip with the sentence spoken (``ref_text``) and the sha256 of the WAV.

The WAVs are committed, so tests and CI never need espeak-ng or sox. Re-run this only to change the clips::

    apt-get install -y espeak-ng sox libsox-fmt-all
    python scripts/make_voice_clips.py            # writes calib_data/voices/
    python scripts/make_voice_clips.py --check    # regenerates in a temp dir and compares sha256
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "calib_data" / "voices"
SAMPLE_RATE = 24000
MIN_SECONDS, MAX_SECONDS = 2.0, 4.0


@dataclass(frozen=True)
class ClipSpec:
    name: str
    lang: str  # codec_language_id name used by the talker
    espeak_voice: str
    ref_text: str
    speed_wpm: int = 160
    pitch: int = 50


CLIPS: tuple[ClipSpec, ...] = (
    ClipSpec("en_male", "english", "en-us", "The morning train was late again, so I walked to work.", pitch=40),
    ClipSpec("en_female", "english", "en-us+f3", "Could you please read the last line back to me?", pitch=55),
    ClipSpec("de_male", "german", "de", "Heute Abend gehen wir gemeinsam ins Kino.", pitch=45),
    ClipSpec("fr_male", "french", "fr", "Nous partirons demain matin vers la mer avec les enfants.", pitch=45),
)


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        sys.exit(f"error: '{tool}' not found; install it with: apt-get install -y espeak-ng sox libsox-fmt-all")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _duration(sox: str, path: Path) -> float:
    out = subprocess.run([sox, "--i", "-D", str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def make_clip(spec: ClipSpec, out_dir: Path, espeak: str, sox: str) -> dict[str, object]:
    out = out_dir / f"{spec.name}.wav"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(
            [espeak, "-v", spec.espeak_voice, "-s", str(spec.speed_wpm), "-p", str(spec.pitch), "-w", str(raw), spec.ref_text],
            check=True,
        )
        # -D: no dither (deterministic output). Trim silence at both ends, add 0.15 s padding, normalise to -1 dBFS.
        subprocess.run(
            [
                sox, "-D", "-V1", str(raw),
                "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer", str(out),
                "silence", "1", "0.02", "0.5%", "reverse", "silence", "1", "0.02", "0.5%", "reverse",
                "pad", "0.15", "0.15",
                "gain", "-n", "-1",
                "rate", "-v", str(SAMPLE_RATE),
            ],
            check=True,
        )
    seconds = _duration(sox, out)
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        sys.exit(f"error: {out} is {seconds:.2f} s, outside {MIN_SECONDS}-{MAX_SECONDS} s; change its ref_text or speed")
    return {
        "name": spec.name,
        "file": out.name,
        "lang": spec.lang,
        "ref_text": spec.ref_text,
        "espeak_voice": spec.espeak_voice,
        "sample_rate": SAMPLE_RATE,
        "seconds": round(seconds, 3),
        "sha256": _sha256(out),
    }


def make_all(out_dir: Path) -> list[dict[str, object]]:
    espeak, sox = _require("espeak-ng"), _require("sox")
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = [make_clip(spec, out_dir, espeak, sox) for spec in CLIPS]
    (out_dir / "voices.json").write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--check", action="store_true", help="regenerate into a temp dir and compare with --out-dir; write nothing"
    )
    args = parser.parse_args(argv)

    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = make_all(Path(tmp))
        committed_path = args.out_dir / "voices.json"
        committed = json.loads(committed_path.read_text(encoding="utf-8")) if committed_path.is_file() else []
        if fresh != committed:
            print(f"MISMATCH: regenerated clips differ from {committed_path}", file=sys.stderr)
            return 1
        print(f"OK: {len(fresh)} clips reproduce {committed_path} byte-for-byte")
        return 0

    entries = make_all(args.out_dir)
    total = sum((args.out_dir / str(e["file"])).stat().st_size for e in entries)
    for e in entries:
        print(f"{e['file']}: {e['seconds']:.2f} s  {e['sha256'][:16]}  {e['ref_text']}")
    print(f"wrote {len(entries)} clips + voices.json to {args.out_dir} ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
