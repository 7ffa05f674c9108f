"""The scale search's objective: squared output error of one module when its Linears' weights are swapped.

Built once per scale group and evaluated ~20 times, so everything that does not depend on the trial weights is
prepared up front: token-wise modules (a Linear, the MLP) see one concatenation of the calibration tokens, cut
into chunks whose largest intermediate stays small (the allocator reuses its blocks instead of mapping and
faulting in fresh pages on every trial); attention sees its right-padded batches, padded once, and the padded rows
are masked out of the error. The reference outputs are the unmodified module's, cut the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tts_awq.quantize.decoder import Activations, DecoderRunner

#: Rows per chunk are chosen so that one [rows, widest] float32 intermediate stays near this many bytes.
CHUNK_BYTES = 16 << 20
MIN_CHUNK_ROWS = 256


@dataclass
class _Part:
    inputs: torch.Tensor  # [rows, in] or a padded batch [B, T, in]
    reference: torch.Tensor  # the unmodified module's output, same leading shape
    mask: torch.Tensor | None  # [B, T, 1] 1.0 on real rows (attention batches only)


def chunk_rows(widest: int, budget_bytes: int = CHUNK_BYTES) -> int:
    return max(MIN_CHUNK_ROWS, budget_bytes // (4 * max(1, widest)))


class ModuleObjective:
    """``loss(weights)``: mean squared error of ``inspect``'s output, over every real token and channel, with the
    Linears ``linears`` of ``layer`` rebound to ``weights`` (never written in place), against ``reference``."""

    def __init__(self, runner: DecoderRunner, layer: nn.Module, linears: Sequence[str], inspect: str,
                 attention: bool, xs: Activations, reference: Activations, widest: int):
        self.runner = runner
        self.modules = [layer.get_submodule(name) for name in linears]
        self.target = layer.get_submodule(inspect)
        self.attention = attention
        self.n_elements = sum(r.numel() for r in reference)
        rows = chunk_rows(widest)
        if attention:
            self.parts = self._padded_parts(xs, reference, rows)
        else:
            x_all, r_all = torch.cat(list(xs)), torch.cat(list(reference))
            self.parts = [_Part(x, r, None) for x, r in zip(x_all.split(rows), r_all.split(rows), strict=True)]

    def _padded_parts(self, xs: Activations, reference: Activations, rows: int) -> list[_Part]:
        lengths = [int(x.shape[0]) for x in xs]
        order = sorted(range(len(xs)), key=lambda i: (-lengths[i], i))
        batches: list[list[int]] = []
        for i in order:  # longest first; a batch holds at most ``rows`` padded rows (and at least one sequence)
            if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= rows:
                batches[-1].append(i)
            else:
                batches.append([i])
        pad = torch.nn.utils.rnn.pad_sequence
        parts = []
        for batch in batches:
            longest = lengths[batch[0]]
            mask = torch.zeros(len(batch), longest, 1, device=xs[0].device)
            for row, i in enumerate(batch):
                mask[row, : lengths[i]] = 1.0
            parts.append(_Part(pad([xs[i] for i in batch], batch_first=True),
                               pad([reference[i] for i in batch], batch_first=True), mask))
        return parts

    def _run(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.attention:
            return self.target(inputs, **self.runner.attention_kwargs(inputs.shape[1]))[0]
        return self.target(inputs)

    @torch.no_grad()
    def loss(self, weights: Sequence[torch.Tensor]) -> float:
        originals = [m.weight.data for m in self.modules]
        total = 0.0
        try:
            for module, weight in zip(self.modules, weights, strict=True):
                module.weight.data = weight  # rebinding, never an in-place write into the original tensor
            for part in self.parts:
                diff = self._run(part.inputs).sub_(part.reference).square_()
                if part.mask is not None:
                    diff.mul_(part.mask)
                total += float(diff.sum())
        finally:
            for module, original in zip(self.modules, originals, strict=True):
                module.weight.data = original
        return total / max(self.n_elements, 1)
