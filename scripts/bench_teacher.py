#!/usr/bin/env python
"""tts-awq teacher throughput and output size.

    python scripts/bench_teacher.py [--root .bench/teacher] [--rows 16] [--out bench_teacher.md]
    python scripts/bench_teacher.py --skip-tiny --skip-size --preset-frames 24 --device cuda   # 1.7B dims on a GPU

a) Tiny model (the random tiny Darwin blend, EOS row x ``--eos-scale`` so that rows stop by themselves): the same
   ``--rows`` rows at batch 1 vs ``--batch`` in one process, and at ``--batch`` in one vs two processes
   (``torch.distributed.run``); one thread per process; each case a fresh process and output directory. frames/s = codec frames written / the
   workers' compute time (model load excluded; two processes: all frames / the slower worker's time); wall time
   includes start-up and load.
b) The 1.7B dimensions (a random dense checkpoint with exactly the Qwen3-TTS-12Hz-1.7B-Base talker and code
   predictor, scripts/make_tiny_checkpoint.py's preset, float32 on CPU): one row, ``--preset-frames`` frames (its
   random talker never stops, so every row runs to its budget), batch 1.
c) Output size: parquet bytes per second of audio (12.5 frames/s) on the tiny model for k = 16 / 64 / 256 (code
   predictor the same k), plus k = 64 with k_cp = 8, and the raw (uncompressed) size those columns would have.
   The tiny talker's distributions are near uniform (random weights), so its log-probabilities compress about as
   badly as they can: real teachers' peaked distributions compress better; read these as upper bounds.
Writes a Markdown table to ``--out`` and the raw numbers to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # an installed tts_awq wins

from bench_scale import machine  # noqa: E402

from tts_awq.testing.damage import edit_weights, scale_eos_row  # noqa: E402
from tts_awq.testing.tiny import build_tiny_darwin, build_tts  # noqa: E402

VOICE = Path(__file__).resolve().parent.parent / "calib_data" / "voices" / "en_male.wav"
REF_TEXT = "The morning train was late again, so I walked to work."
WORKER = re.compile(r"teacher: worker (\d+) computed (\d+) rows \((\d+) frames, ([\d.]+) frames/s over ([\d.]+) s\)")


def tiny_teacher(root: Path, eos_scale: float) -> Path:
    ref = root / f"tiny-eos{eos_scale:g}"
    if not ref.is_dir():
        paths = build_tiny_darwin(root / "tiny", seed=0, alpha=0.03)
        shutil.copytree(paths["tiny-darwin"], ref)
        edit_weights(ref, scale_eos_row(eos_scale))
    return ref


def corpus(path: Path, rows: int) -> Path:
    lines = []
    for i in range(rows):
        row = {"id": f"utt{i:04d}", "text": f"Sentence {i} of the benchmark corpus, read at an even pace.",
               "lang": "english", "ref_audio": str(VOICE)}
        if i % 2:
            row["ref_text"] = REF_TEXT
        lines.append(json.dumps(row) + "\n")
    path.write_text("".join(lines))
    return path


def run_teacher(model: Path, data: Path, out: Path, args: list[str], processes: int = 1,
                device: str = "cpu") -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if device == "cpu" else dict(os.environ)
    # the repo after any PYTHONPATH already set (an installed tts_awq and its carried wheels win, as in gpu_check)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"),
                                                    str(Path(__file__).resolve().parent.parent)) if p)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                 "--master_port", "29541"] if processes > 1 else [sys.executable])
    cmd = [*launcher, "-m", "tts_awq.cli", "teacher", str(model), "--data", str(data), "--out", str(out),
           "--device", device, *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    workers = [tuple(float(x) for x in m.groups()) for m in WORKER.finditer(proc.stderr)]
    frames = sum(w[2] for w in workers)
    seconds = max(w[4] for w in workers)
    prov = json.loads((out / "provenance.json").read_text())
    size = sum(p.stat().st_size for p in (out / "data").glob("*.parquet"))
    return {"wall_s": round(wall, 2), "frames": int(frames), "compute_s": round(seconds, 3),
            "frames_per_s": round(frames / seconds, 2) if seconds else None, "rows": prov["rows"],
            "runaways": prov["runaways"], "bytes": size, "audio_s": prov["frames"] / 12.5,
            "workers": [{"rank": int(w[0]), "rows": int(w[1]), "frames": int(w[2]), "seconds": w[4]}
                        for w in workers]}


def raw_bytes_per_frame(k: int, k_cp: int) -> int:
    """Uncompressed bytes of the target columns per frame: ids int16 + log-probs fp16, plus one fp16 rest."""
    return k * 4 + 2 + 15 * (k_cp * 4 + 2) + 16 * 2  # + the 16 codes (int16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(".bench/teacher"))
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--eos-scale", type=float, default=2.0,
                        help="tiny model's EOS row factor: rows stop by themselves, after ~20-40 frames at 2.0")
    parser.add_argument("--preset-frames", type=int, default=4, help="frames of the 1.7B row (0: skip part b)")
    parser.add_argument("--device", default="cpu", help="device of part b")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--skip-size", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench_teacher.md"))
    args = parser.parse_args(argv)
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    data = corpus(root / "corpus.jsonl", args.rows)
    common = ["--max-new-tokens", str(args.max_new_tokens), "--rows-per-shard", str(max(1, args.rows // 4))]
    lines = [f"# tts-awq teacher benchmark\n\nMachine: {machine()}.\n"]
    raw: dict[str, Any] = {}
    if not args.skip_tiny:
        model = tiny_teacher(root, args.eos_scale)
        cases = [("batch 1, 1 process", ["--batch-size", "1"], 1), (f"batch {args.batch}, 1 process",
                 ["--batch-size", str(args.batch)], 1), (f"batch {args.batch}, 2 processes (torchrun)",
                 ["--batch-size", str(args.batch)], 2)]
        lines += [f"## a) tiny model (EOS x{args.eos_scale:g}): {args.rows} rows, at most {args.max_new_tokens} frames "
                  "each, one thread per process\n",
                  "| case | frames | compute s | frames/s | wall s (incl. start-up, load) |", "|---|---|---|---|---|"]
        for name, extra, processes in cases:
            r = run_teacher(model, data, root / "out", [*common, *extra], processes)
            raw[name] = r
            lines.append(f"| {name} | {r['frames']} | {r['compute_s']} | {r['frames_per_s']} | {r['wall_s']} |")
        lines.append("")
    if args.preset_frames:
        big = root / "random-1.7b-tts-base"
        if not (big / "model.safetensors").is_file():  # build_tts writes atomically: a file there is a whole build
            build_tts(big, preset="1.7b", overwrite=True)
        one = corpus(root / "one.jsonl", 1)
        r = run_teacher(big, one, root / "out-1.7b", ["--max-new-tokens", str(args.preset_frames), "--retries", "0",
                                                       "--batch-size", "1"], device=args.device)
        raw["1.7b"] = r
        lines += [f"## b) 1.7B dimensions (random dense checkpoint), {args.device}, 1 row of {r['frames']} frames\n",
                  "| frames | compute s (incl. prefill and teacher forcing) | frames/s | wall s |", "|---|---|---|---|",
                  f"| {r['frames']} | {r['compute_s']} | {r['frames_per_s']} | {r['wall_s']} |", ""]
    if not args.skip_size:
        model = tiny_teacher(root, args.eos_scale)
        lines += ["## c) output size per second of audio (tiny model; parquet zstd)\n",
                  "| k | k_cp | bytes / s of audio (parquet) | raw bytes / s (uncompressed columns) | hours per GB |",
                  "|---|---|---|---|---|"]
        for k, k_cp in ((16, 16), (64, 64), (256, 256), (64, 8)):
            r = run_teacher(model, data, root / "out", [*common, "--batch-size", str(args.batch), "--k", str(k),
                                                        "--k-cp", str(k_cp)])
            per_s = r["bytes"] / r["audio_s"]
            raw[f"k{k}-cp{k_cp}"] = {**r, "bytes_per_audio_s": per_s}
            lines.append(f"| {k} | {k_cp} | {per_s:,.0f} | {raw_bytes_per_frame(k, k_cp) * 12.5:,.0f} | "
                         f"{1e9 / per_s / 3600:.2f} |")
        lines.append("")
    args.out.write_text("\n".join(lines) + "\n")
    print(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
