"""Export time and size per format at the real Qwen3-TTS 1.7B dimensions.

    .venv/bin/python scripts/bench_export.py [--root .bench/export] [--out bench_export.md]

1. Builds (or reuses) the random ``1.7b`` TTS checkpoint under ROOT with the same builder as
   ``scripts/make_tiny_checkpoint.py --preset 1.7b`` (Qwen3-TTS-12Hz-1.7B-Base shapes, BF16; the codec is the tiny
   one, see tts_awq/testing/presets.py).
2. Quantizes it once with ``--method rtn`` (the export does not care how the integers were chosen; RTN skips the
   AWQ search, which takes ~9 minutes on 2 cores, see bench_scale.md).
3. Runs ``tts-awq export PKG OUT --to F --allow-unvalidated`` for every registered format, each in a fresh process
   (wall time, peak RSS), and measures the output: total bytes, weight-file bytes, bits per talker-linear weight.

Writes a Markdown table to --out (gitignored .bench/ holds the checkpoints, ~12 GB).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tts_awq.checkpoint.files import list_files  # noqa: E402


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import torch

    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}"


def directory_bytes(root: Path) -> tuple[int, int]:
    """(all files, weight files: *.safetensors / *.gguf at the top level) in bytes."""
    files = list_files(root)
    total = sum((root / rel).stat().st_size for rel in files)
    weights = sum((root / rel).stat().st_size for rel in files if "/" not in rel and rel.endswith((".safetensors", ".gguf")))
    return total, weights


#: Runs ``tts-awq ARGS`` in a fresh interpreter and prints its own peak RSS (KiB) last.
CHILD = ("import resource, sys; from tts_awq.cli import main; code = main(sys.argv[1:]); "
         "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")


def run(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``tts-awq ARGS`` in its own process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], check=True, capture_output=True, text=True,
                          cwd=REPO)
    seconds = time.perf_counter() - start
    return seconds, int(proc.stdout.split("MAXRSS")[-1]) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / ".bench" / "export")
    parser.add_argument("--out", type=Path, default=REPO / "bench_export.md")
    args = parser.parse_args(argv)
    from tts_awq.export.registry import load_formats
    from tts_awq.testing.tiny import build_tts

    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    src = root / "random-1.7b-tts-base"
    if not (src / "provenance.json").is_file():
        build_tts(src, seed=0, preset="1.7b")
    pkg = root / "pkg-rtn"
    if not (pkg / "provenance.json").is_file():
        subprocess.run([sys.executable, "-m", "tts_awq.cli", "quantize-talker", str(src), str(pkg), "--method", "rtn",
                        "--n-samples", "2", "--seq-len", "16", "--device", "cpu"], check=True)
    prov = json.loads((pkg / "provenance.json").read_text())
    n_int4 = prov["modules"]["quantized_count"]
    talker = json.loads((pkg / "config.json").read_text())["talker_config"]
    h, i, layers = talker["hidden_size"], talker["intermediate_size"], talker["num_hidden_layers"]
    kv = talker["num_key_value_heads"] * talker["head_dim"]
    q = talker["num_attention_heads"] * talker["head_dim"]
    talker_weights = layers * (h * q + 2 * h * kv + q * h + 3 * h * i)
    rows = []
    pkg_total, pkg_weights = directory_bytes(pkg)
    rows.append(("package (AWQ GEMM)", "-", "-", pkg_total, pkg_weights, 4 + 16 / 128 + 4 / 128))
    per_weight = {"compressed-tensors": 4 + 16 / 128 + 4 / 128, "gguf": 5.0, "mlx": 4 + 2 * 32 / 128}
    for name in sorted(load_formats()):
        out = root / f"export-{name}"
        seconds, peak = run(["export", str(pkg), str(out), "--to", name, "--allow-unvalidated", "--overwrite"])
        total, weights = directory_bytes(out)
        rows.append((name, f"{seconds:.0f}", f"{peak:,.0f}", total, weights, per_weight[name]))
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; `scripts/bench_export.py`: random 1.7B-shaped "
             f"TTS checkpoint (BF16, {layers} talker layers, {n_int4} INT4 linears, "
             f"{talker_weights / 1e6:.0f} M talker-linear weights), quantized once with --method rtn, each export "
             "a fresh process (`--allow-unvalidated`). Sizes in MB (10^6 bytes). The gguf directory holds the talker "
             "only (llama.cpp's mmproj part, code predictor and speaker encoder, is converted from the package by "
             "llama.cpp); bits per weight count scales, zero points / biases / mins at group size 128.", "",
             "| format | export s (incl. self-check) | peak RSS MB | directory MB | weight files MB | bits per talker-linear weight |",
             "|---|---|---|---|---|---|"]
    for name, seconds, peak, total, weights, bits in rows:
        lines.append(f"| {name} | {seconds} | {peak} | {total / 1e6:,.0f} | {weights / 1e6:,.0f} | {bits:.3f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
