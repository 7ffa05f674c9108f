"""Benchmark quantize-talker: wall time, peak RSS, measured bits/weight, AWQ vs RTN logit error.

Each case runs in its own subprocess so peak RSS (ru_maxrss) is that case's alone. Writes a Markdown table to
stdout and to --out (default bench_results.md). CPU by default; pass --device cuda on a GPU machine.

    python scripts/bench_quantize.py [--cases tiny,smollm2,stack] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bits_per_weight(package: Path) -> dict[str, float]:
    """Measured from the files: bytes of qweight+qzeros+scales over the weights they encode, and whole file."""
    from tts_awq.checkpoint import TensorStore

    store = TensorStore(package)
    quant_bytes = 0
    quant_weights = 0
    total_bytes = 0
    total_params = 0
    for name, info in store.infos().items():
        nbytes = info.numel * {"I32": 4, "F16": 2, "BF16": 2, "F32": 4}.get(info.dtype, 1)
        total_bytes += nbytes
        if name.endswith((".qweight", ".qzeros", ".scales")):
            quant_bytes += nbytes
            if name.endswith(".qweight"):
                quant_weights += info.shape[0] * info.shape[1] * 8
                total_params += info.shape[0] * info.shape[1] * 8
        else:
            total_params += info.numel
    return {"bpw_quantized": 8 * quant_bytes / max(1, quant_weights), "bpw_file": 8 * total_bytes / max(1, total_params)}


def _errors(src: Path, package: Path, held_out: list, group_size: int) -> tuple[float, float]:
    from tts_awq.checkpoint import TensorStore, detect_layout
    from tts_awq.quantize.evaluate import layer_tensors, relative_error, rtn_layer_tensors, stack_logits

    s, p = TensorStore(src), TensorStore(package)
    spec = detect_layout(src).decoder
    ref = stack_logits(s, spec, held_out, layer_tensors(s, spec))
    awq = stack_logits(p, spec, held_out, layer_tensors(p, spec), head_store=s)
    rtn = stack_logits(s, spec, held_out, rtn_layer_tensors(layer_tensors(s, spec), 4, group_size))
    return relative_error(ref, awq), relative_error(ref, rtn)


def case_tiny(work: Path, device: str) -> dict:
    import torch

    from tts_awq.prompts import load_prompts, load_voice_clips
    from tts_awq.quantize.calibration import capture_tts
    from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker
    from tts_awq.testing.tiny import build_tiny_darwin

    src = build_tiny_darwin(work / "tiny")["tiny-darwin"]
    start = time.perf_counter()
    out = quantize_talker(QuantizeOptions(src=str(src), out=work / "tiny-awq", n_samples=32, seq_len=128,
                                          device=device, progress=False))
    wall = time.perf_counter() - start
    prompts, _ = load_prompts(split="eval")
    held = capture_tts(src, prompts[:8], load_voice_clips(), 7, 96, "cpu", torch.float32, 8, False)
    awq, rtn = _errors(src, out, held, 128)
    return {"case": "tiny Darwin talker (4 layers, hidden 128), 32x128 calib, g128", "wall_s": wall,
            "awq_err": awq, "rtn_err": rtn, **bits_per_weight(out)}


def case_smollm2(work: Path, device: str) -> dict:
    from tts_awq.checkpoint import TensorStore, detect_layout
    from tts_awq.prompts import load_prompts
    from tts_awq.quantize.calibration import capture_causal_lm
    from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker
    from tts_awq.testing.smollm2 import export_smollm2

    src = export_smollm2(work / "smollm2")
    start = time.perf_counter()
    out = quantize_talker(QuantizeOptions(src=str(src), out=work / "smollm2-awq", group_size=64, n_samples=16,
                                          seq_len=256, device=device, progress=False))
    wall = time.perf_counter() - start
    prompts, _ = load_prompts(split="eval")
    store = TensorStore(src)
    held = capture_causal_lm(src, store, detect_layout(src).decoder.embed or "",
                             [p for p in prompts if p.lang == "english"], 256, 4)
    awq, rtn = _errors(src, out, held, 64)
    return {"case": "SmolLM2-135M (30 layers, real weights), 16x256 calib, g64", "wall_s": wall,
            "awq_err": awq, "rtn_err": rtn, **bits_per_weight(out)}


def build_stack(work: Path, device: str, layers: int) -> dict:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=256, hidden_size=512, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=64)
    Qwen3ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(work / f"stack-{layers}")
    return {}


def case_stack(work: Path, device: str, layers: int) -> dict:
    """A random Qwen3 stack (hidden 512, FFN 1536, BF16, built by another process) through the streaming engine."""
    import torch

    from tts_awq.checkpoint import TensorStore, detect_layout
    from tts_awq.quantize.engine import AwqOptions, run_awq

    src = work / f"stack-{layers}"
    store = TensorStore(src)
    spec = detect_layout(src).decoder
    xs = [torch.randn(128, 512) for _ in range(8)]
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for result in run_awq(store, spec, xs, AwqOptions(clip=False), device, progress=False):
        del result
    return {"case": f"random Qwen3 stack, {layers} layers (h512, ffn1536), engine only, no clip", "wall_s":
            time.perf_counter() - start, "rss_before_mb": base_rss / 1024}


def run_child(name: str, work: Path, device: str) -> dict:
    code = (
        "import json, resource, sys; sys.path.insert(0, 'scripts'); import bench_quantize as b; from pathlib import Path;"
        f"r = b.{name}; r['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024;"
        "print('RESULT' + json.dumps(r))"
    )
    proc = subprocess.run([sys.executable, "-c", code.replace("WORK", str(work)).replace("DEV", device)],
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", default="tiny,smollm2,stack")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench_results.md"))
    args = parser.parse_args()
    wanted = args.cases.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tts-awq-bench-") as tmp:
        work = Path(tmp)
        calls = []
        if "tiny" in wanted:
            calls.append("case_tiny(Path('WORK'), 'DEV')")
        if "smollm2" in wanted:
            calls.append("case_smollm2(Path('WORK'), 'DEV')")
        if "stack" in wanted:
            calls += ["build_stack(Path('WORK'), 'DEV', 4)", "case_stack(Path('WORK'), 'DEV', 4)",
                      "build_stack(Path('WORK'), 'DEV', 16)", "case_stack(Path('WORK'), 'DEV', 16)"]
        for call in calls:
            print(f"running {call.split('(')[0]} ...", file=sys.stderr)
            result = run_child(call, work, args.device)
            if "case" in result:
                rows.append(result)
    header = "| case | wall s | peak RSS MB | bits/weight (INT4 linears) | bits/param (file) | AWQ rel. logit err | RTN rel. logit err |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    def cell(row: dict, key: str, fmt: str = "{:.3f}") -> str:
        return fmt.format(row[key]) if key in row else "-"

    for r in rows:
        lines.append(f"| {r['case']} | {cell(r, 'wall_s', '{:.1f}')} | {cell(r, 'peak_rss_mb', '{:.0f}')} "
                     f"| {cell(r, 'bpw_quantized')} | {cell(r, 'bpw_file')} | {cell(r, 'awq_err', '{:.4f}')} "
                     f"| {cell(r, 'rtn_err', '{:.4f}')} |")
    table = "\n".join(lines)
    import platform

    import torch

    note = (f"\nMeasured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {torch.get_num_threads()} torch threads, "
            f"device {args.device}, torch {torch.__version__}. Peak RSS = ru_maxrss of a fresh subprocess per case "
            "(includes the Python + torch + transformers baseline). Errors: ||dL||/||L|| of logits vs the unquantized "
            "model on held-out data (eval.jsonl), same data for AWQ and RTN.\n")
    print(table + note)
    args.out.write_text(table + "\n" + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
