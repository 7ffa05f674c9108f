#!/usr/bin/env python
"""Benchmark tts-awq at the real Qwen3-TTS-12Hz-1.7B-Base dimensions (random weights).

    python scripts/bench_scale.py [--root DIR] [--device cpu|cuda] [--cases quantize,load,decode]
                                  [--n-samples 8] [--seq-len 128] [--frames 8] [--out bench_scale.md]

Builds (or reuses) the 1.7B-dim random checkpoints with ``make_tiny_checkpoint.py --preset 1.7b`` under
``--root``, then runs every case in a fresh subprocess (peak RSS is that case's alone, from ``wait4``):

a) quantize-talker on the 1.7B-dim Darwin blend with small calibration: seconds per layer, whole run, peak RSS,
   RSS after each layer (from provenance);
b) package size on disk vs the BF16 checkpoint, bits per weight (from the stored tensors);
c) load time and peak RSS of ``tts_awq.load_quantized`` vs the BF16 checkpoint through qwen-tts;
d) decode time per codec frame, prefill excluded: two generations of the same prompt and seed with ``F`` and
   ``2F+2`` new frames; (t_long - t_short) / (frames_long - frames_short). Talker-only time: the mean of the
   decode steps of ``talker.model`` (the 28-layer decoder; one step per frame), timed by hooks. Variants: BF16 checkpoint in bf16 and fp32, INT4
   dequant and INT4 int4mm (bf16, and int4mm with fp32 non-INT4 parts);
e) with ``--device cuda``: the same, plus ``torch.cuda.max_memory_allocated`` and device-resident bytes with the
   text embedding on the host.

Writes a Markdown table (machine and torch version in the header) to stdout and ``--out``. Random weights never
stop, so generation always runs the full budget; frames are counted, not assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # an installed tts_awq wins


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in text)
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu} ({os.cpu_count()} cores; {flags}), torch {torch.__version__}, {torch.get_num_threads()} "
            f"threads{gpu}, Python {platform.python_version()}")


# ---------------------------------------------------------------- child-side cases (run in fresh processes)

def child_quantize(src: str, out: str, device: str, n_samples: int, seq_len: int) -> dict:
    from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker

    start = time.perf_counter()
    quantize_talker(QuantizeOptions(src=src, out=Path(out), n_samples=n_samples, seq_len=seq_len,
                                    device=device, overwrite=True, progress=True))
    wall = time.perf_counter() - start
    prov = json.loads((Path(out) / "provenance.json").read_text())
    layers = prov.get("quantization", prov).get("layer_stats") or _find(prov, "layer_stats")
    return {"wall_s": wall, "timings": prov.get("timings_s", {}),
            "layer_seconds": [s["seconds"] for s in layers], "layer_rss_mb": [s.get("rss_mb") for s in layers]}


def _find(tree: object, key: str) -> object:
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None


def _load(kind: str, path: str, device: str, dtype: str, text_embedding_device: str | None = None):  # noqa: ANN202
    import torch

    if kind == "bf16":
        from tts_awq.quantize.calibration import load_tts_model

        return load_tts_model(Path(path), device, getattr(torch, dtype))
    import tts_awq

    return tts_awq.load_quantized(path, device=device, dtype=dtype, kernel=kind,
                                  text_embedding_device=text_embedding_device)


def _model_bytes(tts) -> dict:  # noqa: ANN001
    from tts_awq.memory import component_bytes

    return getattr(tts, "tts_awq_bytes", None) or component_bytes(tts)


def _never_stop(tts) -> None:  # noqa: ANN001
    """Random weights may sample the codec EOS: mask its logit so every run generates its full budget (the same
    for every variant; the benchmark measures speed, not the stop signal)."""
    eos = int(tts.model.config.talker_config.codec_eos_token_id)

    def hook(_m, _a, out):  # noqa: ANN001, ANN202
        out[..., eos] = float("-inf")
        return out

    tts.model.talker.codec_head.register_forward_hook(hook)


def _say(tts, frames: int):  # noqa: ANN001, ANN202
    import numpy as np
    import torch

    from tts_awq.prompts import load_voice_clips, read_voice

    wav, sr = read_voice(load_voice_clips()[0])
    torch.manual_seed(0)
    wavs, _ = tts.generate_voice_clone(text="Hello, this is a benchmark sentence.", language="english",
                                       ref_audio=(wav, sr), x_vector_only_mode=True, max_new_tokens=frames)
    return int(np.asarray(wavs[0]).size // 1920)


def child_load(kind: str, path: str, device: str, dtype: str) -> dict:
    import torch

    from tts_awq.memory import current_rss_bytes, peak_rss_bytes

    if kind == "bf16":
        from tts_awq.qwen_tts import qwen_tts_classes
    else:
        import tts_awq.loading  # noqa: F401
        from tts_awq.qwen_tts import qwen_tts_classes
    qwen_tts_classes()  # both sides import the same stack before the baseline is read
    baseline_mb = current_rss_bytes() / 2**20
    start = time.perf_counter()
    tts = _load(kind, path, device, dtype)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    load_s = time.perf_counter() - start
    after_load = {"rss_mb": current_rss_bytes() / 2**20, "peak_rss_mb": peak_rss_bytes() / 2**20}
    _never_stop(tts)
    frames = _say(tts, 2)  # touches every weight a generation needs (memory-mapped pages become resident)
    return {"load_s": load_s, "after_load": after_load, "frames": frames, "baseline_rss_mb": baseline_mb,
            "after_first_frames_rss_mb": current_rss_bytes() / 2**20, "bytes": _model_bytes(tts)}


def child_decode(kind: str, path: str, device: str, dtype: str, frames: int,
                 text_embedding_device: str | None = None, stop: str = "never") -> dict:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    tts = _load(kind, path, device, dtype, text_embedding_device)
    talker_model = tts.model.talker.model
    decode_times: list[float] = []
    state = {"t": 0.0}

    def pre(_m, _a, kwargs):  # noqa: ANN001, ANN202
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        state["t"] = time.perf_counter()
        state["len"] = kwargs["inputs_embeds"].shape[1] if kwargs.get("inputs_embeds") is not None else 1

    def post(_m, _a, _k, _o):  # noqa: ANN001, ANN202
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if state["len"] == 1:  # decode steps only; the prefill call has the whole prompt
            decode_times.append(time.perf_counter() - state["t"])

    talker_model.register_forward_pre_hook(pre, with_kwargs=True)
    talker_model.register_forward_hook(post, with_kwargs=True)
    if stop == "never":
        _never_stop(tts)

    def generate(n: int) -> tuple[float, int, list[float]]:
        decode_times.clear()
        start = time.perf_counter()
        made = _say(tts, n)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, made, list(decode_times)

    generate(2)  # warm-up: kernels, allocator, lazy imports
    t_short, f_short, _ = generate(frames)
    t_long, f_long, steps = generate(2 * frames + 2)
    if stop == "never" and f_long - f_short != frames + 2:
        raise RuntimeError(f"expected {frames + 2} more frames in the long run, got {f_short} -> {f_long}")
    frames_delta = max(1, f_long - f_short)
    result = {
        "frame_s": (t_long - t_short) / frames_delta,
        "talker_frame_s": sum(steps) / max(1, len(steps)),  # one talker decode step per frame
        "frames": [f_short, f_long],
        "bytes": _model_bytes(tts),
    }
    if device.startswith("cuda"):
        result["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
    return result


# ---------------------------------------------------------------- parent side

def run_child(call: str, threads: int | None) -> dict:
    """``call`` is a Python expression over this module (imported as ``b``); returns its dict + the child's own
    peak RSS (``wait4``), so no case's memory is masked by another's."""
    code = ("import json, sys; sys.path.insert(0, {!r}); import bench_scale as b; r = b.{}; "
            "print('RESULT' + json.dumps(r))").format(str(REPO / "scripts"), call)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=sys.stderr, text=True,
                            env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    for line in out.splitlines():
        if line.startswith("RESULT"):
            result = json.loads(line[6:])
            result["process_wall_s"] = wall
            result["peak_rss_mb"] = usage.ru_maxrss / 1024
            return result
    raise RuntimeError(f"{call} failed (exit {proc.returncode})")


def ensure_checkpoints(root: Path, preset: str) -> dict[str, Path]:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_checkpoint.py"), str(root),
                           "--preset", preset], stdout=subprocess.PIPE, text=True, check=True)
    paths = [Path(p) for p in proc.stdout.split()]
    by_name = {p.name: p for p in paths}
    darwin = next(p for p in paths if "darwin" in p.name)
    return {"darwin": darwin, **by_name}


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / ".bench" / "scale", help="where the checkpoints live")
    parser.add_argument("--preset", default="1.7b", choices=("1.7b", "tiny"),
                        help="checkpoint dimensions (tiny: a smoke run of this script, says nothing about speed)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default="quantize,load,decode")
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every case")
    parser.add_argument("--out", type=Path, default=REPO / "bench_scale.md")
    args = parser.parse_args(argv)
    cases = set(args.cases.split(","))
    dev = args.device

    ckpt = ensure_checkpoints(args.root, args.preset)
    darwin = ckpt["darwin"]
    package = args.root / f"{darwin.name}-awq"
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; device {dev}; "
             f"{args.preset} random checkpoint `{darwin.name}` (BF16); each case a fresh process.",
             ""]
    results: dict[str, dict] = {}

    if "quantize" in cases or not (package / "provenance.json").is_file():
        r = run_child(f"child_quantize({str(darwin)!r}, {str(package)!r}, {dev!r}, {args.n_samples}, "
                      f"{args.seq_len})", args.threads)
        results["quantize"] = r
        secs = r["layer_seconds"]
        rss = [x for x in r["layer_rss_mb"] if x is not None]
        lines += ["### a) quantize-talker", "",
                  "| calibration | whole run s | calibration s | layer loop s | s/layer (mean, min-max) | "
                  "peak RSS MB | RSS after each layer MB (min-max) |", "|---|---|---|---|---|---|---|",
                  f"| {args.n_samples} prompts x {args.seq_len} rows | {r['wall_s']:.0f} | "
                  f"{r['timings'].get('calibration', float('nan')):.0f} | "
                  f"{r['timings'].get('quantize_layers', float('nan')):.0f} | {sum(secs) / len(secs):.1f} "
                  f"({min(secs):.1f}-{max(secs):.1f}) | {r['peak_rss_mb']:.0f} | "
                  f"{min(rss):.0f}-{max(rss):.0f} |" if rss else "", ""]

    from tts_awq.checkpoint import TensorStore
    from tts_awq.validate.package import disk_bytes, weight_census

    pkg_census, ref_census = weight_census(TensorStore(package)), weight_census(TensorStore(darwin))
    pkg_disk, ref_disk = disk_bytes(package), disk_bytes(darwin)
    main_pkg = sum(v for k, v in pkg_disk.items() if k.startswith("model") and k.endswith("safetensors"))
    main_ref = sum(v for k, v in ref_disk.items() if k.startswith("model") and k.endswith("safetensors"))
    lines += ["### b) size on disk", "",
              "| | BF16 checkpoint | INT4 package | ratio |", "|---|---|---|---|",
              f"| main weights (model*.safetensors) MiB | {mib(main_ref)} | {mib(main_pkg)} | "
              f"{main_pkg / main_ref:.3f} |",
              f"| whole directory MiB | {mib(sum(ref_disk.values()))} | {mib(sum(pkg_disk.values()))} | "
              f"{sum(pkg_disk.values()) / sum(ref_disk.values()):.3f} |",
              f"| bits per weight, talker linears | 16 | {pkg_census['bits_per_weight_quantized']:.3f} | |",
              f"| bits per parameter, whole model file | {ref_census['bits_per_param_overall']:.2f} | "
              f"{pkg_census['bits_per_param_overall']:.2f} | |", ""]

    if "load" in cases:
        variants = [("bf16 checkpoint via qwen-tts (bf16)", "bf16", darwin, "bfloat16"),
                    ("INT4 load_quantized (bf16, kernel=auto)", "auto", package, "bfloat16")]
        rows = []
        for label, kind, path, dtype in variants:
            r = run_child(f"child_load({kind!r}, {str(path)!r}, {dev!r}, {dtype!r})", args.threads)
            rows.append((label, r))
        base = rows[0][1]
        lines += ["### c) load", "",
                  "| loader | load s | peak RSS MB at load | peak RSS MB incl. a 2-frame generation | ratio | "
                  "same minus the process's RSS before loading (imports) MB | ratio |", "|---|---|---|---|---|---|---|"]
        base_model = base["peak_rss_mb"] - base["baseline_rss_mb"]
        lines += [f"| {label} | {r['load_s']:.1f} | {r['after_load']['peak_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                  f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} | {r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} | "
                  f"{(r['peak_rss_mb'] - r['baseline_rss_mb']) / base_model:.2f} |" for label, r in rows]
        lines += ["", "Both loaders memory-map what they do not convert (qwen-tts: every tensor; tts-awq: all but "
                  "the INT4 triples), so pages count once touched: the column with a generation is the fair one "
                  "(the text embedding is touched only in the looked-up rows by either).", ""]
        results["load"] = {label: r for label, r in rows}

    if "decode" in cases:
        variants = [("BF16 checkpoint, bf16", "bf16", darwin, "bfloat16", None),
                    ("BF16 checkpoint, fp32", "bf16", darwin, "float32", None),
                    ("INT4 dequant, bf16", "dequant", package, "bfloat16", None),
                    ("INT4 int4mm, bf16", "int4mm", package, "bfloat16", None),
                    ("INT4 int4mm, fp32 non-INT4 parts", "int4mm", package, "float32", None)]
        if dev.startswith("cuda"):
            variants.append(("INT4 int4mm, bf16, text embedding on host", "int4mm", package, "bfloat16", "cpu"))
        rows = []
        for label, kind, path, dtype, ted in variants:
            r = run_child(f"child_decode({kind!r}, {str(path)!r}, {dev!r}, {dtype!r}, {args.frames}, {ted!r})",
                          args.threads)
            rows.append((label, r))
        base = rows[0][1]
        header = ("| variant | s/frame | ratio vs BF16 bf16 | talker s/frame | talker ratio | talker weights MiB | "
                  "all tensors MiB | without text embedding MiB | peak RSS MB |")
        sep = "|---|---|---|---|---|---|---|---|---|"
        if dev.startswith("cuda"):
            header += " cuda max allocated MiB | device-resident MiB |"
            sep += "---|---|"
        lines += ["### d) decode per codec frame (prefill excluded)", "", header, sep]
        base_talker_bytes = _talker_weight_bytes(base["bytes"], dev)
        for label, r in rows:
            tw = _talker_weight_bytes(r["bytes"], dev)
            line = (f"| {label} | {r['frame_s']:.3f} | {r['frame_s'] / base['frame_s']:.2f} | "
                    f"{r['talker_frame_s']:.3f} | {r['talker_frame_s'] / base['talker_frame_s']:.2f} | "
                    f"{mib(tw)} ({tw / base_talker_bytes:.2f}x) | {mib(_all_bytes(r['bytes']))} | "
                    f"{mib(_all_bytes(r['bytes']) - _all_bytes(r['bytes'], 'text_embedding'))} | "
                    f"{r['peak_rss_mb']:.0f} |")
            if dev.startswith("cuda"):
                on_device = sum(r["bytes"].get(_device_key(r["bytes"], dev), {}).values())
                line += f" {mib(r.get('cuda_max_allocated'))} | {mib(on_device)} |"
            lines.append(line)
        lines.append("")
        lines.append("Talker weights: the 28 decoder layers' tensors (INT4 linears + norms) as resident in memory. "
                     "'Without text embedding': what a GPU would hold with `text_embedding_device=\"cpu\"` "
                     "(the codec here is the tiny one). EOS is masked so every run generates its full budget.")
        lines.append("")
        results["decode"] = {label: r for label, r in rows}

    text = "\n".join(lines)
    print(text)
    args.out.write_text(text + "\n", encoding="utf-8")
    (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


def _device_key(report: dict, dev: str) -> str:
    return next((k for k in report if k.startswith(dev.split(":")[0])), dev)


def _all_bytes(report: dict, component: str | None = None) -> int:
    return sum(v for parts in report.values() for k, v in parts.items() if component in (None, k))


def _talker_weight_bytes(report: dict, dev: str) -> int:
    parts = report.get(_device_key(report, dev), {})
    return int(parts.get("talker_int4_linears", 0) + parts.get("talker_layers_other", 0))


if __name__ == "__main__":
    sys.exit(main())
