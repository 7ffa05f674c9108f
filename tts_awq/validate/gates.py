"""Pass/fail gates: the defaults for real checkpoints, a YAML/JSON override file, and their evaluation.

A gate compares one number of the report with a threshold: ``op`` is ``<=``, ``>=`` or ``in`` (``threshold`` is
then ``[low, high]``). The override file maps gate names to a threshold, a ``{threshold, op}`` mapping, or
``null``/``false`` to switch a gate off; an optional top-level ``gates:`` key may wrap the mapping. Gates that are
off by default (``threshold: null``) can be switched on the same way. Unknown names are an error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tts_awq.errors import UserError

OPS = ("<=", ">=", "in")


@dataclass(frozen=True)
class GateSpec:
    name: str
    op: str
    threshold: Any  # float, [low, high] for "in", or None when the gate is off
    metric: str  # dotted path into the report's "metrics" section
    help: str

    @property
    def enabled(self) -> bool:
        return self.threshold is not None


def _gate(name: str, op: str, threshold: Any, metric: str, help_text: str) -> GateSpec:
    return GateSpec(name=name, op=op, threshold=threshold, metric=metric, help=help_text)


#: Every known gate, in report order. The first six are on by default (values meant for real checkpoints; the
#: runaway bound's default comes from the profile, see :mod:`tts_awq.validate.plan`).
GATES: tuple[GateSpec, ...] = (
    _gate("runaway_excess_upper95", "<=", 0.03, "runaway.excess_upper95",
          "95 % upper bound of (package - reference) never-stopped rate; the profile sets the default"),
    _gate("median_duration_ratio", "in", [0.9, 1.1], "freerun.sentence.median_ratio",
          "median duration ratio package / reference over sentence prompts (long-form prompts are reported apart)"),
    _gate("teacher_top1", ">=", 0.90, "teacher.top1_agreement",
          "teacher-forced first-codebook top-1 agreement with the reference"),
    _gate("kl_mean", "<=", 0.10, "teacher.kl_mean",
          "teacher-forced first-codebook KL(reference || package), mean over frames (nats)"),
    _gate("speaker_similarity_drop", "<=", 0.02, "audio.speaker_similarity.drop",
          "mean speaker similarity to the voice prompt, reference minus package (model's own speaker encoder)"),
    _gate("stop_signal_ratio", ">=", 0.5, "stop.ratio_at_stop",
          "codec EOS probability at the reference stop frame, package / reference (ratio of means)"),
    # Off by default: switch on in a gates file.
    _gate("runaway_count", "<=", None, "freerun.all.runaway_count",
          "free-running generations of the package that hit --max-new-tokens or ran over 2x the reference length"),
    _gate("runaway_p_value", ">=", None, "runaway.excess_p_value_fisher",
          "one-sided exact (Fisher) p-value of 'package runs away more often than the reference'"),
    _gate("kl_p95", "<=", None, "teacher.kl_p95", "95th percentile of the per-frame KL"),
    _gate("teacher_top5", ">=", None, "teacher.top5_agreement",
          "share of frames whose reference top-1 code is in the package's top 5"),
    _gate("nll_increase", "<=", None, "teacher.nll_increase",
          "NLL of the reference codes under the package minus under the reference (nats per frame)"),
    _gate("code_predictor_top1", ">=", None, "teacher.code_predictor.top1_own_hidden",
          "codebooks 1-15 top-1 agreement, each code predictor fed its own talker's hidden states"),
    _gate("stop_signal_ratio_last_frames", ">=", None, "stop.ratio_last_frames",
          "mean EOS probability over the last frames before the reference stop, package / reference"),
    _gate("early_stop_count", "<=", None, "freerun.all.early_stop_count",
          "free-running generations of the package shorter than 0.5x the reference"),
    _gate("long_median_duration_ratio", "in", None, "freerun.long.median_ratio",
          "median duration ratio over long-form prompts"),
    _gate("duration_ratio_p5", ">=", None, "freerun.sentence.p5_ratio", "5th percentile of the duration ratio"),
    _gate("duration_ratio_p95", "<=", None, "freerun.sentence.p95_ratio", "95th percentile of the duration ratio"),
    _gate("log_mel_l1", "<=", None, "audio.teacher_forced.log_mel_l1_mean",
          "log-mel L1 between reference and package audio decoded from teacher-forced greedy codes"),
    _gate("mel_cepstral_distortion", "<=", None, "audio.teacher_forced.mcd_mean",
          "mel-cepstral distortion (dB) on the same audio"),
    _gate("wer_increase", "<=", None, "audio.asr.wer_increase", "WER package minus reference (needs --asr-model)"),
    _gate("cer_increase", "<=", None, "audio.asr.cer_increase", "CER package minus reference (needs --asr-model)"),
    _gate("layer_error_max", "<=", None, "layers.awq_max_relative_error",
          "largest per-linear relative output error of the package on held-out activations"),
)

GATES_BY_NAME = {g.name: g for g in GATES}
#: Gates that need an ASR model (``--asr-model``) to be measured.
ASR_GATES = ("wer_increase", "cer_increase")


def default_gates(runaway_excess: float | None = None) -> dict[str, GateSpec]:
    """The defaults; ``runaway_excess`` replaces the runaway bound's threshold (the profile's value)."""
    gates = dict(GATES_BY_NAME)
    if runaway_excess is not None:
        spec = gates["runaway_excess_upper95"]
        gates[spec.name] = GateSpec(spec.name, spec.op, runaway_excess, spec.metric, spec.help)
    return gates


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise UserError(f"{where}: threshold {value!r} is not a finite number")
    return float(value)


def _threshold(spec: GateSpec, op: str, value: Any, where: str) -> Any:
    if op == "in":
        if isinstance(value, list | tuple) and len(value) == 2:
            low, high = (_number(v, where) for v in value)
            if low > high:
                raise UserError(f"{where}: range [{low}, {high}] is empty; write [low, high]")
            return [low, high]
        tolerance = _number(value, where)  # a bare number means 1 +- tolerance
        if tolerance < 0:
            raise UserError(f"{where}: tolerance {tolerance} must be >= 0")
        return [1.0 - tolerance, 1.0 + tolerance]
    return _number(value, where)


def parse_overrides(data: Any, where: str = "gates", defaults: dict[str, GateSpec] | None = None
                    ) -> dict[str, GateSpec]:
    """Apply an override mapping on top of ``defaults`` (:func:`default_gates` when None); raises UserError for
    anything not understood."""
    if isinstance(data, Mapping) and set(data) == {"gates"}:
        data = data["gates"]
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected a mapping of gate names to thresholds, got {type(data).__name__}")
    gates = dict(defaults) if defaults is not None else default_gates()
    for raw_name, value in data.items():
        name = str(raw_name)
        if name not in gates:
            raise UserError(f"{where}: unknown gate {name!r}; known gates: {', '.join(GATES_BY_NAME)}")
        spec = gates[name]
        entry = f"{where}: gate {name}"
        if value is None or value is False:
            gates[name] = GateSpec(name, spec.op, None, spec.metric, spec.help)
            continue
        op = spec.op
        if isinstance(value, Mapping):
            unknown = set(value) - {"threshold", "op", "enabled"}
            if unknown:
                raise UserError(f"{entry}: unknown keys {sorted(unknown)}; use threshold, op, enabled")
            op = str(value.get("op", spec.op))
            if op not in OPS:
                raise UserError(f"{entry}: op {op!r} is not one of {', '.join(OPS)}")
            if (op == "in") != (spec.op == "in"):
                raise UserError(f"{entry}: op {op!r} does not fit this gate (its op is {spec.op!r})")
            if value.get("enabled", True) is False:
                gates[name] = GateSpec(name, op, None, spec.metric, spec.help)
                continue
            if "threshold" not in value:
                raise UserError(f"{entry}: needs a threshold")
            value = value["threshold"]
            if value is None:
                gates[name] = GateSpec(name, op, None, spec.metric, spec.help)
                continue
        gates[name] = GateSpec(name, op, _threshold(spec, op, value, entry), spec.metric, spec.help)
    return gates


def load_gates(path: str | Path | None, defaults: dict[str, GateSpec] | None = None) -> dict[str, GateSpec]:
    """Defaults, or the defaults overridden by a YAML (``.yaml``/``.yml``) or JSON file."""
    if path is None:
        return dict(defaults) if defaults is not None else default_gates()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: gates file cannot be read ({exc.__class__.__name__}); check the path") from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (json.JSONDecodeError, ValueError) as exc:
        raise UserError(f"{path}: gates file is not valid JSON ({exc}); fix the syntax") from exc
    except Exception as exc:  # yaml.YAMLError and its subclasses
        reason = " ".join(str(exc).split())[:160]
        raise UserError(f"{path}: gates file is not valid YAML ({reason}); fix the syntax") from exc
    return parse_overrides(data, where=str(path), defaults=defaults)


def metric_value(metrics: Mapping[str, Any], dotted: str) -> Any:
    node: Any = metrics
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _passes(op: str, value: float, threshold: Any) -> bool:
    if op == "<=":
        return value <= threshold
    if op == ">=":
        return value >= threshold
    low, high = threshold
    return low <= value <= high


def evaluate_gates(gates: Mapping[str, GateSpec], metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: {value, threshold, op, passed, metric, ...}}`` for every enabled gate, in ``GATES`` order.

    An enabled gate whose value could not be measured fails (``"note": "not measured"``).
    """
    results: dict[str, dict[str, Any]] = {}
    for spec in GATES:
        gate = gates.get(spec.name, spec)
        if not gate.enabled:
            continue
        value = metric_value(metrics, gate.metric)
        entry: dict[str, Any] = {"value": value, "threshold": gate.threshold, "op": gate.op, "metric": gate.metric}
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            entry["passed"] = False
            entry["note"] = "not measured"
        else:
            entry["passed"] = bool(_passes(gate.op, float(value), gate.threshold))
        entry["help"] = gate.help
        results[gate.name] = entry
    return results


def disabled_gates(gates: Mapping[str, GateSpec]) -> list[str]:
    return [spec.name for spec in GATES if not gates.get(spec.name, spec).enabled]
