#!/usr/bin/env python
"""validate-awq throughput: qwen-tts vs the fast decode loop, batch 1 vs N, 1 vs 2 processes, release-profile rate.

    python scripts/bench_validate.py [--root .bench/validate] [--batch 8] [--profile standard] [--out bench_validate.md]
    python scripts/bench_validate.py --preset 1.7b --device cuda --batch 32 --skip-engines --skip-processes \
        --target-jobs 400                                  # issue 11's GPU target, on a GPU machine

a) The same jobs (``--n-prompts`` x 1 seed, ``--max-new-tokens``) with qwen-tts's own generate at batch 1 (the
   one-at-a-time loop), the fast decode loop at batch 1 (identical codes, so identical metrics) and the fast loop
   at ``--batch``, each a fresh process and cache: jobs per second of the collect stage, generation seconds, and
   the summary metrics side by side (batching changes the sampled tokens, so batch 1 and ``--batch`` agree within
   sampling tolerance, not exactly).
b) A ``--profile`` run at ``--batch`` in one process vs the same run in two processes, started by the command
   itself (``--workers 2``) and by ``torch.distributed.run`` (gloo); each a fresh subprocess and cache with one
   thread per process, the three run in turn ``--repeats`` times (this VM's speed drifts by tens of percent
   within minutes): median wall time and its ratio to the single process.
c) ``--target-jobs N`` (0: skipped): the ``release`` profile's settings (4 seeds, max_new_tokens 2048) on N jobs
   (N/4 prompts) at ``--batch`` on ``--device``: jobs per second, codec frames per job, and the time 2000 jobs
   would take at that rate (the GPU goal: <= 30 min on one H200). ``--preset 1.7b`` runs it on the random
   checkpoint of the real Qwen3-TTS-12Hz-1.7B-Base talker dimensions (scripts/make_tiny_checkpoint.py; its codec
   is the tiny random one, so codec decoding is cheaper than with the real codec), EOS row scaled by
   ``--eos-scale`` so that generations stop (frames per job are measured and reported, not assumed).
Writes a Markdown table to ``--out`` and the raw numbers to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # an installed tts_awq wins

from bench_scale import machine  # noqa: E402

from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker  # noqa: E402
from tts_awq.testing.damage import copy_package, edit_weights, scale_eos_row  # noqa: E402
from tts_awq.testing.tiny import build_tiny_darwin  # noqa: E402

RELEASE_JOBS = 2000
GPU_GOAL_S = 30 * 60

NO_GATES = {"median_duration_ratio": None, "teacher_top1": None, "kl_mean": None, "speaker_similarity_drop": None,
            "stop_signal_ratio": None, "runaway_excess_upper95": None}
METRICS = (("runaway", "package", "rate"), ("freerun", "sentence", "median_ratio"), ("teacher", "kl_mean"),
           ("teacher", "top1_agreement"), ("stop", "ratio_at_stop"))


def layout(root: Path, preset: str = "tiny") -> tuple[Path, Path, Path]:
    """(checkpoint-set root, stopping reference, AWQ package) under ``root``; ``scripts/gpu_check.py`` builds the
    same layout, so either reuses what the other left."""
    base = root if preset == "tiny" else root / preset
    return base / "tiny" if preset == "tiny" else base / "src", base / "ref", base / "awq"


def stopping_reference(root: Path, preset: str = "tiny", eos_scale: float = 3.0) -> Path:
    """The preset's random Darwin blend with its EOS row scaled (random weights would rarely stop), built once."""
    sources, ref, _ = layout(root, preset)
    paths = build_tiny_darwin(sources, seed=0, alpha=0.03, preset=preset)
    marker = ref.with_name(f"{ref.name}.eos-scale")  # beside the model, never inside it
    if not (ref.is_dir() and marker.is_file() and marker.read_text().strip() == repr(eos_scale)):
        marker.unlink(missing_ok=True)
        shutil.rmtree(ref, ignore_errors=True)
        shutil.copytree(next(path for name, path in paths.items() if name.endswith("darwin")), ref)
        edit_weights(ref, scale_eos_row(eos_scale))
        marker.write_text(f"{eos_scale!r}\n")
    return ref


def build(root: Path, preset: str = "tiny", device: str = "cpu", eos_scale: float = 3.0) -> tuple[Path, Path]:
    """The reference (the preset's random Darwin blend, EOS row scaled) and its AWQ package, built once."""
    _, ref, pkg = layout(root, preset)
    if not pkg.is_dir():
        ref = stopping_reference(root, preset, eos_scale)
        quantize_talker(QuantizeOptions(src=str(ref), out=pkg, n_samples=4, seq_len=32, calib_batch_size=4,
                                        device=device, progress=False))
    return pkg, ref


def run_cli(pkg: Path, ref: Path, gates: Path, args: list[str], processes: int = 1, device: str = "cpu",
            verbose: bool = False) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if device == "cpu" else dict(os.environ)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                 "--master_port", "29531"] if processes > 1 else [sys.executable])
    cmd = launcher + ["-m", "tts_awq.validate", str(pkg), "--reference", str(ref), "--device", device,
                      "--gates", str(gates), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if verbose else subprocess.PIPE, text=True,
                          env=env)
    if proc.returncode not in (0, 1):
        raise SystemExit((proc.stderr or f"validate-awq exited {proc.returncode}")[-2000:])
    return time.perf_counter() - start


def metric(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data["metrics"]
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(".bench/validate"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--n-prompts", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--skip-processes", action="store_true")
    parser.add_argument("--skip-engines", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target-jobs", type=int, default=0, help="c) release-profile jobs to time (0: skip)")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "1.7b"))
    parser.add_argument("--device", default="cpu", help="for c) (a) and b) always run on CPU)")
    parser.add_argument("--eos-scale", type=float, default=3.0, help="EOS row factor of the reference")
    parser.add_argument("--out", type=Path, default=Path("bench_validate.md"))
    parser.add_argument("--verbose", action="store_true", help="let validate-awq's progress and logs through")
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    pkg, ref = build(args.root, args.preset, args.device, args.eos_scale)
    gates = args.root / "gates.json"
    gates.write_text(json.dumps(NO_GATES))
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; {args.preset} random model "
             f"(tts_awq.testing.tiny, EOS row x{args.eos_scale:g}); a) and b) on CPU, one thread per process; "
             "fresh job cache per run."]
    if not args.skip_engines:
        lines += engines(args, pkg, ref, gates)
    if not args.skip_processes:
        lines += processes(args, pkg, ref, gates)
    if args.target_jobs:
        lines += release_rate(args, pkg, ref, gates)
    text = "\n".join(lines) + "\n"
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


def engines(args: argparse.Namespace, pkg: Path, ref: Path, gates: Path) -> list[str]:
    sizes = ["--n-prompts", str(args.n_prompts), "--seeds", "1", "--max-new-tokens", str(args.max_new_tokens)]
    cases = [("qwen-tts", 1), ("fast", 1), ("fast", args.batch)]
    rows, reports = [], {}
    for engine, batch in cases:
        work = copy_package(pkg, args.root / f"{engine}-{batch}")
        seconds = run_cli(work, ref, gates, [*sizes, "--batch-size", str(batch), "--engine", engine])
        data = json.loads((work / "validation" / "report.json").read_text())
        reports[(engine, batch)] = data
        collect = data["timings_s"]["collect"]
        generate = metric(data, ("throughput", "generate_seconds_per_job_mean")) * args.n_prompts
        rows.append((engine, batch, args.n_prompts / collect, collect, generate, seconds))
        shutil.rmtree(work)
    base, base_gen = rows[0][2], rows[0][4]
    lines = ["", f"a) {args.n_prompts} jobs x 1 seed, max_new_tokens {args.max_new_tokens}: collect stage "
             "(both models generate, teacher forcing, audio); generate = both models' generation only. "
             "Ratios are to the one-at-a-time qwen-tts loop (first row).", "",
             "| engine | batch | jobs/s (collect) | ratio | collect s | generate s | generate ratio | "
             "whole command s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {e} | {b} | {g:.3f} | {g / base:.2f}x | {c:.1f} | {gen:.1f} | {base_gen / gen:.2f}x | {s:.1f} |"
              for e, b, g, c, gen, s in rows]
    lines += ["", "| metric | " + " | ".join(f"{e} batch {b}" for e, b in cases) + " |",
              "|---|" + "---|" * len(cases)]
    lines += [f"| {'.'.join(p)} | " + " | ".join(str(metric(reports[c], p)) for c in cases) + " |" for p in METRICS]
    return lines


def processes(args: argparse.Namespace, pkg: Path, ref: Path, gates: Path) -> list[str]:
    run_args = ["--profile", args.profile, "--max-new-tokens", str(args.max_new_tokens), "--batch-size",
                str(args.batch)]
    cases = {"1 process": ([], 1), "--workers 2": (["--workers", "2"], 1), "torchrun, 2 processes": ([], 2)}
    walls: dict[str, list[float]] = {name: [] for name in cases}
    for repeat in range(args.repeats):
        for name, (extra, launched) in cases.items():
            work = copy_package(pkg, args.root / "proc")
            walls[name].append(run_cli(work, ref, gates, [*run_args, *extra], launched))
            shutil.rmtree(work)
            print(f"repeat {repeat + 1}: {name}: {walls[name][-1]:.1f} s", flush=True)
    base = statistics.median(walls["1 process"])
    lines = ["", f"b) --profile {args.profile} (max_new_tokens {args.max_new_tokens}, batch {args.batch}), whole "
             f"command wall time, {args.repeats} runs of each in turn", "",
             "| processes | median wall s | ratio to 1 | runs s |", "|---|---|---|---|"]
    lines += [f"| {name} | {statistics.median(w):.1f} | {statistics.median(w) / base:.2f}x | "
              f"{', '.join(f'{x:.1f}' for x in w)} |" for name, w in walls.items()]
    return lines


def release_rate(args: argparse.Namespace, pkg: Path, ref: Path, gates: Path) -> list[str]:
    prompts = max(1, args.target_jobs // 4)
    shutil.rmtree(args.root / "release", ignore_errors=True)  # what a killed run left
    work = copy_package(pkg, args.root / "release")
    wall = run_cli(work, ref, gates, ["--profile", "release", "--n-prompts", str(prompts), "--batch-size",
                                      str(args.batch)], device=args.device, verbose=args.verbose)
    data = json.loads((work / "validation" / "report.json").read_text())
    shutil.rmtree(work)
    jobs, collect = len(data["prompts"]), data["timings_s"]["collect"]
    frames = [p["freerun"][k] for p in data["prompts"] for k in ("reference_frames", "package_frames")]
    runaways = sum(p["freerun"]["package_hit_limit"] or p["freerun"]["reference_hit_limit"] for p in data["prompts"])
    estimate = collect / jobs * RELEASE_JOBS + (wall - collect)
    verdict = "met" if estimate <= GPU_GOAL_S else "not met"
    return ["", f"c) release profile (4 seeds, max_new_tokens {data['settings']['max_new_tokens']}) on {jobs} jobs, "
            f"batch {args.batch}, device {args.device}", "",
            "| jobs | collect s | jobs/s | frames per generation (mean, max) | hit the limit | whole command s | "
            f"{RELEASE_JOBS} jobs estimated min | goal <= {GPU_GOAL_S // 60} min |", "|---|---|---|---|---|---|---|---|",
            f"| {jobs} | {collect:.1f} | {jobs / collect:.3f} | {statistics.mean(frames):.0f}, {max(frames)} | "
            f"{runaways} | {wall:.1f} | {estimate / 60:.1f} | {verdict} |", "",
            "Estimate: collect seconds per job x 2000 + the run's fixed costs (whole command minus collect)."]


if __name__ == "__main__":
    raise SystemExit(main())
