"""The check every export runs on itself before its rename: each exported INT4 linear, dequantized by a reader
that shares no code with the writer, against the package's dequantized weight."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tts_awq.export.source import ExportSource


def fp16_half_ulp(values: torch.Tensor) -> torch.Tensor:
    """Half the float16 spacing at each value: the largest error of rounding it to float16 (normal range)."""
    v = values.abs().float().clamp_min(2.0**-14)
    return torch.exp2(torch.floor(torch.log2(v)) - 10) / 2


@dataclass
class LinearChecks:
    """Max |Δw| per linear against a per-linear bound (0 = must be bit-exact in float32)."""

    rule: str
    max_abs_dw: dict[str, float] = field(default_factory=dict)
    bound: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, exported: torch.Tensor, reference: torch.Tensor, bound: float = 0.0) -> None:
        if tuple(exported.shape) != tuple(reference.shape):
            raise RuntimeError(f"export check: {name} reads back as {list(exported.shape)}, "
                               f"expected {list(reference.shape)}")
        dw = float((exported.float() - reference.float()).abs().max()) if reference.numel() else 0.0
        if not dw <= bound:  # also catches NaN
            raise RuntimeError(f"export check: {name} differs from the package's dequantized weight by "
                               f"max |dw| {dw:.3g} > {bound:.3g} ({self.rule}); nothing was written")
        self.max_abs_dw[name] = dw
        self.bound[name] = bound

    def run(self, source: ExportSource, read_back: Any) -> None:
        """``read_back(name) -> (dense float tensor, bound)`` for every INT4 linear of ``source``."""
        for name in source.int4:
            exported, bound = read_back(name)
            self.add(name, exported, source.reference(name), bound)

    def summary(self) -> dict[str, Any]:
        worst = max(self.max_abs_dw.values(), default=0.0)
        return {"linears": len(self.max_abs_dw), "max_abs_dw": worst, "max_bound": max(self.bound.values(), default=0.0),
                "exact": worst == 0.0, "rule": self.rule}
