"""Can every enabled gate pass at the planned size? Checked before anything is generated.

A gate that cannot pass by construction (the runaway bound with zero runaways on both sides is still above its
threshold; a long-form gate with no long prompt selected) would only tell the user after the whole run. The
runaway check uses the very bound the gate evaluates (:func:`tts_awq.validate.stats.excess_upper_bound` at
zero runaways), so "reachable" means: some outcome of this run passes the gate. A reachable gate that the
measured run does not resolve stays a FAIL, with :func:`explain_failures` saying why in the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tts_awq.errors import UserError
from tts_awq.prompts import Prompt
from tts_awq.validate import plan, stats
from tts_awq.validate.gates import GateSpec

RUNAWAY_GATE = "runaway_excess_upper95"
#: Gates measured on sentence (non-long) prompts and on long-form prompts (see :mod:`tts_awq.validate.freerun`).
SENTENCE_GATES = ("median_duration_ratio", "duration_ratio_p5", "duration_ratio_p95")
LONG_GATES = ("long_median_duration_ratio",)
#: Count gates (<=) and the p-value gate (>=) whose best outcome is 0 runaways.
COUNT_GATES = ("runaway_count", "early_stop_count")
_CAP = 10_000_000


def best_runaway_bound(generations: int) -> float:
    """The gate's bound when neither side runs away once in ``generations`` (the best any run can measure)."""
    return stats.excess_upper_bound(0, generations, 0, generations)


def generations_to_pass(threshold: float) -> int | None:
    """Smallest number of generations whose best bound is <= ``threshold`` (None when no size reaches it)."""
    if not threshold > 0 or best_runaway_bound(_CAP) > threshold:
        return None
    lo, hi = 0, 1  # invariant: best_runaway_bound(hi) <= threshold, and lo fails (or is 0)
    while best_runaway_bound(hi) > threshold:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if best_runaway_bound(mid) <= threshold:
            hi = mid
        else:
            lo = mid
    return hi


def _profiles_fitting(generations: int) -> list[str]:
    bound = best_runaway_bound(generations)
    return [p.name for p in plan.PROFILES.values() if p.runaway_excess_upper95 >= bound]


def _runaway_problem(gate: GateSpec, settings: plan.Settings, n_prompts: int) -> str | None:
    n = n_prompts * settings.seeds
    threshold = float(gate.threshold)
    if gate.op != "<=" or best_runaway_bound(n) <= threshold:
        return None
    size = f"{n} generations ({n_prompts} prompts x {settings.seeds} seeds)"
    need = generations_to_pass(threshold)
    bound = best_runaway_bound(n)
    override = (f"raise it in a --gates file ({RUNAWAY_GATE}: {math.ceil(bound * 1000) / 1000:g}) or switch it off "
                f"({RUNAWAY_GATE}: null)")
    fitting = [name for name in _profiles_fitting(n) if name != settings.profile]
    profile = f"use --profile {fitting[0]} (its threshold fits this size), or " if fitting else ""
    if need is None:
        return (f"gate {RUNAWAY_GATE} cannot pass: its threshold {threshold:g} is below what any number of "
                f"generations can bound; {profile}{override}")
    prompts = math.ceil(need / settings.seeds)
    return (f"gate {RUNAWAY_GATE} cannot pass at {size}: even with no runaway on either side its 95 % upper bound "
            f"is {bound:.3f} > threshold {threshold:g} (profile {settings.profile}); the smallest size that can "
            f"resolve it is {need} generations (--n-prompts {prompts} with --seeds {settings.seeds}); or "
            f"{profile}{override}")


def _smallest_selection(prompts: list[Prompt], want_long: bool) -> int | None:
    for n in range(1, len(prompts) + 1):
        if any((p.kind == "long") == want_long for p in plan.select_prompts(prompts, n)):
            return n
    return None


def _prompt_kind_problem(name: str, selected: list[Prompt], available: list[Prompt], want_long: bool) -> str | None:
    if any((p.kind == "long") == want_long for p in selected):
        return None
    kind = "long-form" if want_long else "sentence (non-long)"
    smallest = _smallest_selection(available, want_long)
    fix = (f"use --n-prompts {smallest} or more" if smallest is not None
           else "use an --eval file that has such prompts")
    return (f"gate {name} cannot pass: it is measured on {kind} prompts and the {len(selected)} selected prompt(s) "
            f"hold none; {fix}, or switch it off in a --gates file ({name}: null)")


def check_reachable(gates: Mapping[str, GateSpec], settings: plan.Settings, selected: list[Prompt],
                    available: list[Prompt]) -> None:
    """One-line UserError (exit 2) for the first enabled gate that no outcome of the planned run can pass."""
    problems: list[str | None] = []
    runaway = gates.get(RUNAWAY_GATE)
    if runaway is not None and runaway.enabled:
        problems.append(_runaway_problem(runaway, settings, len(selected)))
    for name in COUNT_GATES:
        gate = gates.get(name)
        if gate is not None and gate.enabled and gate.op == "<=" and float(gate.threshold) < 0:
            problems.append(f"gate {name} cannot pass: a count is never below its threshold {gate.threshold:g}; "
                            f"set it to 0 or more in the --gates file")
    p_gate = gates.get("runaway_p_value")
    if p_gate is not None and p_gate.enabled and p_gate.op == ">=" and float(p_gate.threshold) > 1:
        problems.append(f"gate runaway_p_value cannot pass: a p-value is never above 1 (threshold "
                        f"{p_gate.threshold:g}); lower it in the --gates file")
    for names, want_long in ((SENTENCE_GATES, False), (LONG_GATES, True)):
        for name in names:
            gate = gates.get(name)
            if gate is not None and gate.enabled:
                problems.append(_prompt_kind_problem(name, selected, available, want_long))
    first = next((p for p in problems if p), None)
    if first is not None:
        raise UserError(f"{first} (nothing was generated)")


def explain_failures(results: dict[str, dict[str, Any]], metrics: Mapping[str, Any]) -> None:
    """Add a note to a failed runaway gate: whether the package ran away more, or the run was too small to resolve
    the threshold (reachable, but not resolved by what was measured)."""
    entry = results.get(RUNAWAY_GATE)
    section = metrics.get("runaway") or {}
    if entry is None or entry.get("passed") or not section.get("generations"):
        return
    n = int(section["generations"])
    k_pkg, k_ref = section["package"]["k"], section["reference"]["k"]
    resolvable = (section.get("resolution") or {}).get("resolvable_excess_with_n")
    detail = f"package {k_pkg} vs reference {k_ref} runaways in {n} generations"
    if resolvable is not None and math.isfinite(resolvable):
        detail += f"; {n} generations resolve an excess of about {resolvable:.3f}"
    entry["note"] = (f"{detail}; more generations (a larger --n-prompts/--seeds or profile) narrow the bound"
                     if k_pkg <= k_ref else f"{detail}: the package runs away more often than the reference")
