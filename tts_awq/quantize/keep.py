"""``--keep-bf16``: which decoder Linears stay dense, from files of names and fnmatch patterns.

An argument that names an existing file is read as one module name (or pattern) per line, ``#`` comments and
blank lines allowed: the ``validation/keep_bf16.txt`` that validate-awq writes. Any other argument is an fnmatch
pattern over full Linear names (``talker.model.layers.27.mlp.down_proj``, ``*.layers.0.*``). Every name or
pattern must match at least one decoder Linear. :class:`KeepPlan` adds the ``--keep-bf16-budget`` picks of
:mod:`tts_awq.quantize.sensitivity` and describes the result for provenance.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tts_awq.checkpoint.store import TensorStore
from tts_awq.errors import UserError
from tts_awq.quantize.sensitivity import LinearScore, choose_within_budget, extra_bytes

EXAMPLE = "e.g. talker.model.layers.27.mlp.down_proj or '*.layers.0.mlp.*'"
#: Linears vLLM fuses into one module (qkv_proj, gate_up_proj): a fused module is all-INT4 or all-dense there.
FUSED_GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj"))


def fused_siblings(name: str) -> list[str]:
    """The other members of ``name``'s fused group (``...layers.3.self_attn.q_proj`` -> k_proj, v_proj); [] if none."""
    for group in FUSED_GROUPS:
        for member in group:
            if name.endswith("." + member):
                stem = name[: -len(member)]
                return [stem + other for other in group if other != member]
    return []


def split_fused_groups(kept: Sequence[str], linears: Sequence[str]) -> list[str]:
    """Fused groups (as ``a+b+c``) of which some members are in ``kept`` and others are INT4 in ``linears``."""
    kept_set, present = set(kept), set(linears)
    split = []
    for name in kept:
        partners = [s for s in fused_siblings(name) if s in present and s not in kept_set]
        group = "+".join(sorted([name, *fused_siblings(name)]))
        if partners and group not in split:
            split.append(group)
    return split


def _patterns_of(arg: str) -> list[tuple[str, str]]:
    """(pattern, where) pairs of one ``--keep-bf16`` argument."""
    path = Path(arg).expanduser()
    if not path.is_file():
        return [(arg, f"--keep-bf16 {arg}")]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the --keep-bf16 file ({exc.__class__.__name__}); pass a UTF-8 text "
                        "file with one module name per line") from exc
    found = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            found.append((text, f"{path}:{number}"))
    return found


def resolve_keep_bf16(args: Sequence[str], linears: Sequence[str]) -> dict[str, str]:
    """Full Linear name -> why it is kept (``--keep-bf16 ARG``), in the order of ``linears``; a name or pattern
    that matches no decoder Linear is a one-line UserError."""
    reasons: dict[str, str] = {}
    for arg in args:
        for pattern, where in _patterns_of(arg):
            matched = [name for name in linears if fnmatch.fnmatchcase(name, pattern)]
            if not matched:
                raise UserError(f"{where}: {pattern!r} matches no decoder Linear (full names, {EXAMPLE}); "
                                "fix the name or pattern")
            for name in matched:
                reasons.setdefault(name, f"--keep-bf16 {arg}")
    return {name: reasons[name] for name in linears if name in reasons}


@dataclass
class KeepPlan:
    """The Linears a run keeps dense and why (``--keep-bf16 ARG`` or ``budget``), with the budget scan if any."""

    reasons: dict[str, str] = field(default_factory=dict)  # full name -> reason, in layer order
    budget_bytes: int | None = None
    scan: list[dict[str, Any]] | None = None  # LinearScore dicts, most sensitive first

    @property
    def names(self) -> list[str]:
        return list(self.reasons)

    def with_budget(self, scores: Sequence[LinearScore], budget_bytes: int, order: Sequence[str]) -> KeepPlan:
        """Add the scan's picks within ``budget_bytes`` (``order``: every decoder Linear, in layer order)."""
        table = choose_within_budget(scores, budget_bytes, already=self.reasons)
        picked = {e.name for e in table if e.kept}
        reasons = {n: self.reasons.get(n, "budget") for n in order if n in self.reasons or n in picked}
        return KeepPlan(reasons, budget_bytes, [e.to_dict() for e in table])

    def with_fused_groups(self, order: Sequence[str]) -> KeepPlan:
        """Keep every member of a vLLM fused group (q/k/v, gate/up) dense when one member is (``--keep-bf16-fused``)."""
        added = {s: f"fused with {name} (--keep-bf16-fused)" for name in self.reasons for s in fused_siblings(name)
                 if s not in self.reasons}
        reasons = {n: self.reasons.get(n) or added[n] for n in order if n in self.reasons or n in added}
        return KeepPlan(reasons, self.budget_bytes, self.scan)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, order kept (pairs: the resume state's JSON sorts object keys)."""
        return {"reasons": [[n, r] for n, r in self.reasons.items()], "budget_bytes": self.budget_bytes,
                "scan": self.scan}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeepPlan:
        return cls({n: r for n, r in data["reasons"]}, data.get("budget_bytes"), data.get("scan"))

    def provenance(self, store: TensorStore, group_size: int) -> dict[str, Any]:
        """Names, reasons and sizes (dense vs INT4 bytes of each kept Linear) for provenance.json."""
        sizes = {}
        for name in self.reasons:
            info = store.info(f"{name}.weight")
            sizes[name] = {"dense_bytes": info.nbytes, "int4_bytes": info.nbytes - extra_bytes(info, group_size),
                           "extra_bytes": extra_bytes(info, group_size)}
        return {
            "names": self.names,
            "reasons": self.reasons,
            "sizes": sizes,
            "extra_bytes": sum(s["extra_bytes"] for s in sizes.values()),
            "budget_bytes": self.budget_bytes,
            "scan_score": None if self.scan is None else (
                "rank = max(score / median score, |eos_shift| / median |eos_shift|): score = relative output error "
                "of round-to-nearest INT4 on the calibration inputs, eos_shift = its first-order relative change "
                "of the mean per-frame P(codec EOS) under teacher forcing (tts_awq/quantize/sensitivity.py, "
                "eos_shift.py)"),
            "scan": self.scan,
        }
