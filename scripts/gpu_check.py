#!/usr/bin/env python
"""GPU acceptance: every CUDA path of tts-awq measured in one run (called by ``scripts/gpu_check.sh``).

    python scripts/gpu_check.py OUTDIR [--rehearse] [--only a,b,c,d,e] [--reuse DIR]

Parts, each in its own process with its own time limit; a failing part is recorded and the next one runs:

a) ``tests/test_gpu.py`` (on CUDA every test must pass, none skipped);
b) the preset's random checkpoints (``make_tiny_checkpoint.py``; 1.7B dimensions on the GPU), their EOS row scaled
   so generations stop (the reference of d/e), then ``quantize-talker --device DEV`` on it with a small
   calibration: seconds per layer, whole run, peak ``torch.cuda.max_memory_allocated``;
c) ``load_quantized(device=DEV, kernel="int4mm", text_embedding_device="cpu")``: load time, device-resident bytes by
   component, peak allocated memory during a generation (goal <= 1.3 GB plus the codec), and teacher-forced
   first-codebook agreement of the int4mm kernel with the exact dequant kernel on the generated rows;
d) decode seconds per codec frame, INT4 int4mm vs the BF16 reference in bf16, batch 1 and 8, fast engine, EOS
   masked so every item runs its budget, CUDA synchronised, prefill excluded: (t(2F+2) - t(F)) / (F + 2), each
   time the faster of two runs (the rehearsal's figures on a shared CPU are not measurements);
e) validate-awq on the package through ``scripts/bench_validate.py`` (release profile settings on N jobs,
   extrapolated to its 2000 generations; goal <= 30 min);
f) (only with ``--only f``) ``tts-awq teacher`` frames/s at the 1.7B dimensions on DEV through
   ``scripts/bench_teacher.py`` (its own random dense 1.7B checkpoint, one row).

Writes ``OUTDIR/gpu_check.md`` (a table per part; machine, driver, torch in the header), ``gpu_check.json``,
``gpu_check.log`` (each part's output tail) and ``bench_validate.md`` (part e): 4 files. ``--rehearse`` runs the same
code on this CPU with the tiny preset and tiny sizes. Checkpoints live under ``--reuse DIR`` (default: a fixed
directory under the system temp dir), so a rerun skips the build.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
PARTS = ("a", "b", "c", "d", "e", "f")
#: What a run without --only runs: f is left out so the default run fits one 10-minute device call.
DEFAULT_PARTS = ("a", "b", "c", "d", "e")
MEMORY_GOAL_BYTES = 1.3e9
LOG_TAIL = 6000  # characters of each part's output kept in gpu_check.log


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and its CPU rehearsal."""

    device: str
    preset: str
    calib_samples: int
    calib_seq_len: int
    generate_frames: int  # part c
    decode_frames: int  # part d: F
    decode_batches: tuple[int, ...]
    validate_jobs: int  # part e
    validate_batch: int
    limits_s: dict[str, int]


GPU = Sizes(device="cuda", preset="1.7b", calib_samples=8, calib_seq_len=128, generate_frames=128,
            decode_frames=16, decode_batches=(1, 8), validate_jobs=64, validate_batch=32,
            limits_s={"a": 65, "b": 190, "c": 50, "d": 140, "e": 140, "f": 240})
REHEARSAL = Sizes(device="cpu", preset="tiny", calib_samples=4, calib_seq_len=32, generate_frames=8,
                  decode_frames=4, decode_batches=(1, 8), validate_jobs=8, validate_batch=4,
                  limits_s={"a": 600, "b": 600, "c": 600, "d": 900, "e": 900, "f": 900})


# ------------------------------------------------------------------------------------------ child side

def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak(device: str) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _requests(n: int, seed: int = 0) -> list[Any]:
    from tts_awq.prompts import load_voice_clips, read_voice
    from tts_awq.qwen_tts.generate import VoiceClone

    clip = load_voice_clips()[0]
    wav, sr = read_voice(clip)
    return [VoiceClone(text=f"This is benchmark sentence number {i}, spoken at an even pace.", lang="english",
                       ref_audio=(wav, sr), ref_text="", icl=False, seed=seed + i, voice=Path(str(clip)).stem)
            for i in range(n)]


def _never_stop(tts: Any) -> None:
    """Mask the codec EOS logit: every item generates its whole budget (part d measures speed, not stopping)."""
    eos = int(tts.model.config.talker_config.codec_eos_token_id)

    def hook(_module: Any, _args: Any, out: Any) -> Any:
        out[..., eos] = float("-inf")
        return out

    tts.model.talker.codec_head.register_forward_hook(hook)


def child_b(state: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    """Build the checkpoints and the stopping reference (timed), then quantize-talker through its CLI entry."""
    import torch

    sys.path.append(str(SCRIPTS))
    import bench_validate
    from bench_scale import _find

    root = Path(state["root"])
    _, ref, pkg = bench_validate.layout(root, sizes.preset)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-P", str(SCRIPTS / "make_tiny_checkpoint.py"),
                           str(bench_validate.layout(root, sizes.preset)[0]), "--preset", sizes.preset],
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"make_tiny_checkpoint.py exited {proc.returncode}")
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = bench_validate.stopping_reference(root, sizes.preset)
    reference_s = time.perf_counter() - start
    shutil.rmtree(pkg, ignore_errors=True)
    from tts_awq.cli import quantize_talker_main

    _reset_peak(sizes.device)
    start = time.perf_counter()
    code = quantize_talker_main([str(ref), str(pkg), "--device", sizes.device, "--n-samples",
                                 str(sizes.calib_samples), "--seq-len", str(sizes.calib_seq_len),
                                 "--calib-batch-size", str(sizes.calib_samples)])
    wall = time.perf_counter() - start
    if code:
        raise RuntimeError(f"quantize-talker exited {code}")
    prov = json.loads((pkg / "provenance.json").read_text())
    stats = _find(prov, "layer_stats") or []
    seconds = [float(s["seconds"]) for s in stats if isinstance(s, dict) and "seconds" in s]
    return {"build_s": build_s, "reference_s": reference_s, "quantize_wall_s": wall,
            "timings_s": prov.get("timings_s", {}), "layers": len(seconds),
            "layer_s_mean": sum(seconds) / max(1, len(seconds)), "layer_s_max": max(seconds, default=0.0),
            "peak_allocated": _peak(sizes.device), "package": str(pkg), "reference": str(ref),
            "cuda": torch.cuda.is_available()}


def _paths(state: dict[str, Any], sizes: Sizes) -> tuple[Path, Path]:
    sys.path.append(str(SCRIPTS))
    import bench_validate

    _, ref, pkg = bench_validate.layout(Path(state["root"]), sizes.preset)
    if not (pkg / "provenance.json").is_file():
        raise RuntimeError(f"no package at {pkg}: part b did not run or failed")
    return ref, pkg


def child_c(state: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    """Load with int4mm (text embedding on the host), generate, compare teacher-forced logits with dequant."""
    import torch

    import tts_awq
    from tts_awq.qwen_tts.forward import codec_logits, talker_hidden
    from tts_awq.qwen_tts.generate import decode_codes, generate_voice_clone

    _, pkg = _paths(state, sizes)
    _reset_peak(sizes.device)
    start = time.perf_counter()
    tts = tts_awq.load_quantized(pkg, device=sizes.device, dtype="bfloat16", kernel="int4mm",
                                 text_embedding_device="cpu")
    _sync(sizes.device)
    load_s = time.perf_counter() - start
    load_peak = _peak(sizes.device)
    allocated_after_load = int(torch.cuda.memory_allocated()) if sizes.device.startswith("cuda") else None
    _reset_peak(sizes.device)
    start = time.perf_counter()
    result = generate_voice_clone(tts, _requests(1), max_new_tokens=sizes.generate_frames, capture=True)[0]
    wav, sr = decode_codes(tts, result.codes, result.ref_code)
    _sync(sizes.device)
    generate_s = time.perf_counter() - start
    generation_peak = _peak(sizes.device)
    rows = result.rows
    int4mm_logits = codec_logits(tts, talker_hidden(tts, rows))
    kernels, resident = dict(tts.tts_awq_kernels), tts.tts_awq_bytes
    del tts
    if sizes.device.startswith("cuda"):
        torch.cuda.empty_cache()
    exact = tts_awq.load_quantized(pkg, device=sizes.device, dtype="bfloat16", kernel="dequant",
                                   text_embedding_device="cpu")
    dequant_logits = codec_logits(exact, talker_hidden(exact, rows))
    agreement = _agreement(int4mm_logits, dequant_logits)
    return {"load_s": load_s, "load_peak_allocated": load_peak, "allocated_after_load": allocated_after_load,
            "generation_peak_allocated": generation_peak, "generate_s": generate_s, "frames": result.frames,
            "stopped": result.stopped, "audio_s": len(wav) / sr, "kernels": kernels, "resident_bytes": resident,
            "rows": int(rows.shape[0]), **agreement}


def _agreement(test: Any, ref: Any) -> dict[str, float]:
    """int4mm vs dequant first-codebook logits on the same rows: top-1 agreement, KL(ref || test), relative error."""
    import torch

    log_ref, log_test = torch.log_softmax(ref, -1), torch.log_softmax(test, -1)
    kl = (log_ref.exp() * (log_ref - log_test)).sum(-1)
    return {"top1_agreement": float((ref.argmax(-1) == test.argmax(-1)).double().mean()),
            "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
            "relative_logit_error": float((test - ref).norm() / ref.norm())}


def child_d(state: dict[str, Any], sizes: Sizes, variant: str) -> dict[str, Any]:
    """Seconds per codec frame of one variant at each batch size (see the module docstring)."""
    import torch

    import tts_awq
    from tts_awq.qwen_tts.generate import generate_voice_clone

    ref, pkg = _paths(state, sizes)
    _reset_peak(sizes.device)
    if variant == "int4mm":
        tts = tts_awq.load_quantized(pkg, device=sizes.device, dtype="bfloat16", kernel="int4mm",
                                     text_embedding_device="cpu")
    else:
        from tts_awq.qwen_tts import load_tts_model

        tts = load_tts_model(ref, sizes.device, torch.bfloat16)
    _never_stop(tts)

    def timed(batch: int, frames: int) -> tuple[float, int]:
        requests = _requests(batch)
        _sync(sizes.device)
        start = time.perf_counter()
        results = generate_voice_clone(tts, requests, max_new_tokens=frames)
        _sync(sizes.device)
        seconds, made = time.perf_counter() - start, min(r.frames for r in results)
        print(f"[part d {variant}] batch {batch}, {made} frames: {seconds:.3f} s", file=sys.stderr, flush=True)
        return seconds, made

    out: dict[str, Any] = {"variant": variant}
    frames = sizes.decode_frames
    for batch in sizes.decode_batches:
        timed(batch, 2)  # warm-up: kernels, allocator, voice prompt
        runs = [(timed(batch, frames), timed(batch, 2 * frames + 2)) for _ in range(2)]
        (t_short, f_short), (t_long, f_long) = min(r[0] for r in runs), min(r[1] for r in runs)
        if f_long - f_short != frames + 2:
            raise RuntimeError(f"batch {batch}: expected {frames + 2} more frames, got {f_short} -> {f_long}")
        out[f"batch{batch}"] = {"frame_s": (t_long - t_short) / (f_long - f_short), "frames": [f_short, f_long],
                                "seconds": [t_short, t_long]}
    out["peak_allocated"] = _peak(sizes.device)
    return out


def child_e(state: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    """bench_validate.py's release-rate part on the package of part b (built there if b left none)."""
    table = Path(state["outdir"]) / "bench_validate.md"
    cmd = [sys.executable, str(SCRIPTS / "bench_validate.py"), "--root", state["root"], "--preset", sizes.preset,
           "--device", sizes.device, "--batch", str(sizes.validate_batch), "--skip-engines", "--skip-processes",
           "--target-jobs", str(sizes.validate_jobs), "--out", str(table), "--verbose"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"bench_validate.py exited {proc.returncode}")
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ") and line[2:3].isdigit()]
    if not rows:
        raise RuntimeError(f"{table} has no result row")
    cells = [c.strip() for c in rows[-1].strip("|").split("|")]
    keys = ("jobs", "collect_s", "jobs_per_s", "frames_mean_max", "hit_limit", "command_s", "estimate_min", "goal")
    return {"wall_s": wall, **dict(zip(keys, cells, strict=True))}


def child_f(state: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    """bench_teacher.py's 1.7B-dimension part (one row, EOS never met by the random talker) on DEV."""
    table = Path(state["outdir"]) / "bench_teacher.md"
    frames = "24" if sizes.device.startswith("cuda") else "4"
    cmd = [sys.executable, str(SCRIPTS / "bench_teacher.py"), "--root", str(Path(state["root"]) / "teacher"),
           "--skip-tiny", "--skip-size", "--preset-frames", frames, "--device", sizes.device, "--out", str(table)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"bench_teacher.py exited {proc.returncode}")
    lines = table.read_text().splitlines()
    heading = next((i for i, line in enumerate(lines) if line.startswith("## b) 1.7B")), None)
    rows = [line for line in lines[heading or 0:] if line.startswith("| ") and line[2:3].isdigit()]
    if heading is None or not rows:
        raise RuntimeError(f"{table} has no 1.7B row")
    return {"wall_s": time.perf_counter() - start, "heading": lines[heading], "row": rows[0]}


CHILDREN = {"b": child_b, "c": child_c, "e": child_e, "f": child_f}


def run_child(part: str, state_file: Path, rehearse: bool, variant: str | None) -> int:
    state = json.loads(state_file.read_text())
    sizes = REHEARSAL if rehearse else GPU
    result = child_d(state, sizes, variant or "int4mm") if part == "d" else CHILDREN[part](state, sizes)
    print("RESULT" + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------ parent side

@dataclass
class PartResult:
    part: str
    title: str
    ok: bool
    seconds: float
    data: dict[str, Any]
    error: str = ""


def _run(cmd: list[str], limit_s: float, log: list[str], label: str, env: dict[str, str] | None = None,
         live: bool = True) -> tuple[int, str, str]:
    """Run ``cmd`` with a time limit; returns (exit code or 124, stdout, output tail). Its stderr (logs, progress)
    goes live to ours, so a run killed from outside still shows how far each part got; ``live=False`` captures it."""
    try:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE if not live else None,
                              text=True, timeout=limit_s, env=env)
        code, out, err = proc.returncode, proc.stdout, proc.stderr or ""
    except subprocess.TimeoutExpired as exc:
        code = 124
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        err += f"\n[gpu_check] killed after {limit_s:.0f} s"
    tail = (out + "\n" + err)[-LOG_TAIL:]
    log.append(f"===== {label} (exit {code}) =====\n{tail}\n")
    return code, out, tail


def _child(part: str, args: argparse.Namespace, state_file: Path, limit_s: float, log: list[str],
           variant: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-P", str(Path(__file__).resolve()), "--child", part, "--state", str(state_file)]
    if args.rehearse:
        cmd.append("--rehearse")
    if variant:
        cmd += ["--variant", variant]
    env = dict(os.environ)
    if args.rehearse:  # a shared CPU: spinning OpenMP threads of several processes would starve each other
        env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    code, out, tail = _run(cmd, limit_s, log, f"part {part}{' ' + variant if variant else ''}", env)
    for line in out.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    last = [line for line in tail.strip().splitlines() if line.strip()][-1:] or ["no output"]
    raise RuntimeError(f"exit {code}: {last[0][:300]}")


def part_a(args: argparse.Namespace, sizes: Sizes, state_file: Path, log: list[str]) -> dict[str, Any]:
    code, out, _ = _run([sys.executable, "-P", "-m", "pytest", "tests/test_gpu.py", "-q", "-rA", "-p",
                         "no:cacheprovider"], sizes.limits_s["a"], log, "part a: pytest tests/test_gpu.py")
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    for count, what in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary[-1] if summary else ""):
        counts["error" if what.startswith("error") else what] += int(count)
    data = {**counts, "exit": code, "summary": summary[-1].strip("= ") if summary else ""}
    if code not in (0, 5) or counts["failed"] or counts["error"]:
        raise PartFailed(f"pytest exit {code}: {data['summary'] or 'no summary'}", data)
    if sizes.device == "cuda" and (counts["skipped"] or not counts["passed"]):
        raise PartFailed(f"{counts['skipped']} test(s) skipped on CUDA: {data['summary']}", data)
    return data


class PartFailed(Exception):
    def __init__(self, message: str, data: dict[str, Any]) -> None:
        super().__init__(message)
        self.data = data


TITLES = {"a": "tests/test_gpu.py", "b": "checkpoint build + quantize-talker", "c": "load_quantized int4mm",
          "d": "decode per codec frame", "e": "validate-awq release rate", "f": "teacher at 1.7B dimensions"}


def run_parts(args: argparse.Namespace) -> list[PartResult]:
    sizes = REHEARSAL if args.rehearse else GPU
    outdir: Path = args.outdir
    outdir.mkdir(parents=True, exist_ok=True)
    root = args.reuse or Path(tempfile.gettempdir()) / f"tts-awq-gpu-check-{sizes.preset}"
    root.mkdir(parents=True, exist_ok=True)
    state_file = root / "gpu_check_state.json"
    state_file.write_text(json.dumps({"root": str(root), "outdir": str(outdir.resolve())}))
    log: list[str] = []
    results: list[PartResult] = []
    header = environment()
    for part in args.only:
        print(f"[gpu_check] part {part}: {TITLES[part]} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            if part == "a":
                data = part_a(args, sizes, state_file, log)
            elif part == "d":
                data = {v: _child("d", args, state_file, sizes.limits_s["d"] / 2, log, v) for v in ("int4mm", "bf16")}
            else:
                data = _child(part, args, state_file, sizes.limits_s[part], log)
            results.append(PartResult(part, TITLES[part], True, time.perf_counter() - start, data))
        except PartFailed as exc:
            results.append(PartResult(part, TITLES[part], False, time.perf_counter() - start, exc.data, str(exc)))
        except Exception as exc:  # a failing part is recorded and the next one runs
            results.append(PartResult(part, TITLES[part], False, time.perf_counter() - start, {},
                                      f"{type(exc).__name__}: {exc}"))
        done = results[-1]
        print(f"[gpu_check] part {part}: {'ok' if done.ok else 'FAILED'} in {done.seconds:.1f} s"
              f"{'' if done.ok else ' - ' + done.error}", file=sys.stderr, flush=True)
        write_outputs(outdir, header, sizes, results, log)  # after every part: a timeout keeps what finished
    return results


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "cuda_runtime": torch.version.cuda, "cpu_count": os.cpu_count(),
                            "machine": platform.machine()}
    from importlib import import_module, metadata

    for name, dist in (("transformers", "transformers"), ("huggingface_hub", "huggingface_hub"),
                       ("tokenizers", "tokenizers"), ("accelerate", "accelerate"), ("numpy", "numpy"),
                       ("qwen_tts", "qwen-tts"), ("tts_awq", "tts-awq"), ("safetensors", "safetensors")):
        try:
            module = import_module(name)
            info[name] = metadata.version(dist)
            if name == "tts_awq":
                info["tts_awq_from"] = str(Path(module.__file__).parent)
        except (ImportError, metadata.PackageNotFoundError) as exc:
            info[name] = f"missing ({exc})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, sm{props.major}{props.minor}"
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = "?"
    else:
        info["gpu"] = "none (CPU rehearsal)"
    return info


# ------------------------------------------------------------------------------------------ report

def _gb(n: Any) -> str:
    return "-" if n is None else f"{n / 1e9:.3f}"


def _ms(s: Any) -> str:
    return "-" if s is None else f"{1000 * s:.2f}"


def render(header: dict[str, Any], sizes: Sizes, results: list[PartResult]) -> str:
    lines = ["# tts-awq GPU acceptance (`scripts/gpu_check.sh`)", "",
             f"{header['date']}; GPU: {header.get('gpu')}; driver {header.get('driver', '-')}; torch "
             f"{header['torch']} (CUDA {header['cuda_runtime']}); Python {header['python']}; transformers "
             f"{header['transformers']}; huggingface_hub {header['huggingface_hub']}; qwen-tts {header['qwen_tts']}; "
             f"tts-awq {header['tts_awq']} from {header.get('tts_awq_from', '?')}; {header['cpu_count']} CPU cores.",
             f"Sizes: {json.dumps({k: v for k, v in asdict(sizes).items() if k != 'limits_s'})}", "",
             "| part | what | result | seconds |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.part} | {r.title} | {'ok' if r.ok else 'FAILED: ' + r.error.replace('|', '/')} | "
                     f"{r.seconds:.1f} |")
    for r in results:
        if r.data:
            lines += ["", f"## {r.part}) {r.title}", ""] + RENDER[r.part](r.data)
    return "\n".join(lines) + "\n"


def _render_a(d: dict[str, Any]) -> list[str]:
    return ["| passed | failed | skipped | errors | summary |", "|---|---|---|---|---|",
            f"| {d['passed']} | {d['failed']} | {d['skipped']} | {d['error']} | {d['summary']} |"]


def _render_b(d: dict[str, Any]) -> list[str]:
    t = d.get("timings_s", {})
    return ["| checkpoint build s | EOS-scaled reference s | quantize-talker s | calibration s | layer loop s | "
            "layers | s/layer (mean, max) | peak cuda allocated GB |", "|---|---|---|---|---|---|---|---|",
            f"| {d['build_s']:.1f} | {d['reference_s']:.1f} | {d['quantize_wall_s']:.1f} | "
            f"{t.get('calibration', 0):.1f} | {t.get('quantize_layers', 0):.1f} | {d['layers']} | "
            f"{d['layer_s_mean']:.2f}, {d['layer_s_max']:.2f} | {_gb(d['peak_allocated'])} |"]


def _render_c(d: dict[str, Any]) -> list[str]:
    resident = d.get("resident_bytes", {})
    device_key = next((k for k in resident if k != "cpu"), None)
    on_device = resident.get(device_key, {}) if device_key else {}
    codec = on_device.get("codec", 0)
    peak = d.get("generation_peak_allocated")
    verdict = "-" if peak is None else ("met" if peak <= MEMORY_GOAL_BYTES + codec else "not met")
    lines = ["| load s | kernels | peak allocated at load GB | generation peak allocated GB | codec GB | "
             "goal <= 1.3 GB + codec | frames | teacher-forced top-1 int4mm vs dequant | KL mean | KL max | "
             "relative logit error |", "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| {d['load_s']:.1f} | {d['kernels']} | {_gb(d.get('load_peak_allocated'))} | {_gb(peak)} | "
             f"{_gb(codec)} | {verdict} | {d['frames']} | {d['top1_agreement']:.4f} | {d['kl_mean']:.2e} | "
             f"{d['kl_max']:.2e} | {d['relative_logit_error']:.2e} |", "",
             "Resident bytes by device and component (MB):", "", "| device | component | MB |", "|---|---|---|"]
    for device, parts in resident.items():
        for component, n in sorted(parts.items()):
            lines.append(f"| {device} | {component} | {n / 1e6:,.1f} |")
    return lines


def _render_d(d: dict[str, Any]) -> list[str]:
    int4, bf16 = d.get("int4mm", {}), d.get("bf16", {})
    lines = ["| batch | INT4 int4mm ms/frame | BF16 ms/frame | ratio INT4/BF16 | goal (batch 1: <= 1.0x) |",
             "|---|---|---|---|---|"]
    for key in sorted({k for k in (*int4, *bf16) if k.startswith("batch")}, key=lambda k: int(k[5:])):
        a, b = int4.get(key, {}).get("frame_s"), bf16.get(key, {}).get("frame_s")
        ratio = a / b if a and b else None
        goal = ("met" if ratio <= 1.0 else "not met") if ratio is not None and key == "batch1" else "-"
        lines.append(f"| {key[5:]} | {_ms(a)} | {_ms(b)} | {'-' if ratio is None else f'{ratio:.2f}x'} | {goal} |")
    lines += ["", f"Peak allocated GB: INT4 {_gb(int4.get('peak_allocated'))}, BF16 {_gb(bf16.get('peak_allocated'))}."]
    return lines


def _render_e(d: dict[str, Any]) -> list[str]:
    return ["| jobs | collect s | jobs/s | frames per generation (mean, max) | hit the limit | whole command s | "
            "2000 jobs estimated min | goal <= 30 min |", "|---|---|---|---|---|---|---|---|",
            f"| {d['jobs']} | {d['collect_s']} | {d['jobs_per_s']} | {d['frames_mean_max']} | {d['hit_limit']} | "
            f"{d['command_s']} | {d['estimate_min']} | {d['goal']} |"]


def _render_f(d: dict[str, Any]) -> list[str]:
    return [d["heading"].lstrip("# "), "", "| frames | compute s (incl. prefill and teacher forcing) | frames/s | wall s |",
            "|---|---|---|---|", d["row"]]


RENDER = {"a": _render_a, "b": _render_b, "c": _render_c, "d": _render_d, "e": _render_e, "f": _render_f}


def write_outputs(outdir: Path, header: dict[str, Any], sizes: Sizes, results: list[PartResult],
                  log: list[str]) -> None:
    (outdir / "gpu_check.md").write_text(render(header, sizes, results), encoding="utf-8")
    payload = {"environment": header, "sizes": asdict(sizes), "parts": [asdict(r) for r in results]}
    (outdir / "gpu_check.json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    (outdir / "gpu_check.log").write_text("".join(log), encoding="utf-8")


def parse_only(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"--only takes a comma list of {','.join(PARTS)}, not {text!r}")
    return sorted(set(parts), key=PARTS.index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path, nargs="?", help="where gpu_check.md/.json/.log go (at most 6 files)")
    parser.add_argument("--rehearse", action="store_true", help="CPU rehearsal: tiny preset, tiny sizes")
    parser.add_argument("--only", type=parse_only, default=list(DEFAULT_PARTS),
                        help="e.g. b,c (default: a-e; f only when named)")
    parser.add_argument("--reuse", type=Path, help="checkpoint root an earlier run left (skips the build)")
    parser.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=("int4mm", "bf16"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args.child, args.state, args.rehearse, args.variant)
    if args.outdir is None:
        parser.error("OUTDIR is required")
    if not args.rehearse:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device here; run with --rehearse for the CPU rehearsal", file=sys.stderr)
            return 2
    results = run_parts(args)
    print((args.outdir / "gpu_check.md").read_text())
    failed = [r.part for r in results if not r.ok]
    print(f"[gpu_check] {len(results) - len(failed)}/{len(results)} parts ok"
          f"{'; failed: ' + ','.join(failed) if failed else ''}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
