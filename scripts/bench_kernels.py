#!/usr/bin/env python
"""Per-linear INT4 kernel timings at the real talker shapes vs a dense matmul of the same shape and dtype.

    python scripts/bench_kernels.py [--rows 1,64] [--device cpu] [--repeat 30] [--out bench_kernels.md]

Shapes: q/o (2048 -> 2048), k/v (2048 -> 1024), gate/up (2048 -> 6144), down (6144 -> 2048), group 128. For each
activation dtype and row count: dense ``F.linear`` with the dequantized weight, ``AwqInt4Linear`` with
``kernel="int4mm"`` and ``kernel="dequant"``, and the per-call dequantization the runtime used before
(``dequantize_gemm`` + ``F.linear``). Median of ``--repeat`` calls after warm-up, all in one process, so the
ratios are side by side. One line of the talker = 196 such linears per codec frame (28 layers x 7).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_scale import machine  # noqa: E402

from tts_awq.quantize.int4 import quantize  # noqa: E402
from tts_awq.quantize.linear import AwqInt4Linear  # noqa: E402
from tts_awq.quantize.pack import dequantize_gemm  # noqa: E402

SHAPES = {"q/o": (2048, 2048), "k/v": (1024, 2048), "gate/up": (6144, 2048), "down": (2048, 6144)}


def timed(fn, repeat: int, device: torch.device) -> float:  # noqa: ANN001
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("bench_kernels.md"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; device {device}; group 128; median of "
             f"{args.repeat} calls; ms per call (ratio to dense of the same dtype).", "",
             "| linear | rows | dtype | dense | int4mm | dequant | old per-call dequant |", "|---|---|---|---|---|---|---|"]
    for label, (out_features, in_features) in SHAPES.items():
        w = torch.randn(out_features, in_features, generator=gen) * 0.02
        template = AwqInt4Linear.from_quantized(quantize(w, 4, 128))
        awq = (template.qweight.to(device), template.qzeros.to(device), template.scales.to(device))
        modules = {}
        for kernel in ("int4mm", "dequant"):
            module = AwqInt4Linear.from_quantized(quantize(w, 4, 128)).to(device)
            module.prepare(kernel)
            modules[kernel] = module
        for rows in (int(r) for r in args.rows.split(",")):
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(rows, in_features, generator=gen).to(device, dtype)
                dense_w = dequantize_gemm(*awq, 128, dtype)
                dense = timed(lambda: F.linear(x, dense_w), args.repeat, device)  # noqa: B023
                cells = []
                for kernel in ("int4mm", "dequant"):
                    t = timed(lambda: modules[kernel](x), args.repeat, device)  # noqa: B023
                    cells.append(f"{t * 1e3:.2f} ({t / dense:.2f}x)")
                old = timed(lambda: F.linear(x, dequantize_gemm(*awq, 128, dtype)), max(5, args.repeat // 5),  # noqa: B023
                            device)
                cells.append(f"{old * 1e3:.1f} ({old / dense:.0f}x)")
                lines.append(f"| {label} {in_features}->{out_features} | {rows} | {str(dtype)[6:]} | "
                             f"{dense * 1e3:.2f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
