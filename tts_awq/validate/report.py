"""The report: ``report.json`` (the machine contract), ``report.md`` (for people) and the provenance record.

Contract of ``report.json`` (kept stable for ``tts-awq push``): top-level ``passed`` (bool), ``failed_gates``
(names), ``gates`` (``{name: {value, threshold, op, passed, ...}}``), ``package`` (facts), ``prompts`` (one entry
per prompt and seed), ``reference`` and ``package_dir`` (identities). The package's ``provenance.json`` gains a
top-level ``validation`` entry ``{report_sha256, passed, created_unix, ...}``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tts_awq.checkpoint.files import sha256_file, write_json
from tts_awq.errors import UserError
from tts_awq.provenance import PROVENANCE_NAME

SCHEMA = "tts-awq/validation-report/1"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, tuples lists, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_report(data: dict[str, Any], path: Path) -> str:
    path.write_text(json.dumps(clean(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    return sha256_file(path)


def check_provenance_writable(package_root: Path) -> None:
    path = package_root / PROVENANCE_NAME
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: unreadable provenance.json ({exc.__class__.__name__}); restore it") from exc
        if not isinstance(data, dict):
            raise UserError(f"{path}: provenance.json is not a JSON object; restore it")


def record_in_provenance(package_root: Path, entry: dict[str, Any]) -> None:
    """Set the top-level ``validation`` key of OUT/provenance.json, keeping everything else as it was."""
    path = package_root / PROVENANCE_NAME
    data: dict[str, Any] = {}
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
    data["validation"] = entry
    tmp = path.with_name(f".{PROVENANCE_NAME}.tmp")
    write_json(tmp, data)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------- Markdown


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e4 or abs(value) < 1e-3:
            return f"{value:.3e}"
        return f"{value:.{digits}g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v, digits) for v in value) + "]"
    return str(value)


def _threshold(gate: dict[str, Any]) -> str:
    if gate["op"] == "in":
        low, high = gate["threshold"]
        return f"in [{_fmt(low)}, {_fmt(high)}]"
    return f"{gate['op']} {_fmt(gate['threshold'])}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return lines


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def markdown(report: dict[str, Any]) -> str:
    m = report["metrics"]
    gates = report["gates"]
    verdict = "PASS" if report["passed"] else "FAIL"
    out = [f"# validate-awq: {verdict}", ""]
    if report["failed_gates"]:
        failing = "; ".join(
            f"`{name}` = {_fmt(gates[name]['value'])} (needs {_threshold(gates[name])}"
            f"{', ' + gates[name]['note'] if gates[name].get('note') else ''})"
            for name in report["failed_gates"])
        out += [f"**FAIL** - failing gates: {failing}", ""]
    else:
        out += [f"**PASS** - all {len(gates)} gates pass.", ""]
    ref = report["reference"]
    ev = report["eval"]
    out += [
        f"- package: `{report['package_dir']['path']}`",
        f"- reference: `{ref['spec']}` ({ref['kind']})",
        f"- eval: {ev['source']} ({ev['n_prompts']} prompts x {len(ev['seeds'])} seeds, "
        f"max_new_tokens {ev['max_new_tokens']}), device {report['settings']['device']}, "
        f"dtype {report['settings']['dtype']}",
        "",
        "## Gates",
        "",
    ]
    out += _table(["gate", "value", "threshold", "result", "what it measures"],
                  [[f"`{n}`", g["value"], _threshold(g), ("pass" if g["passed"] else "**FAIL**")
                    + (f" ({g['note']})" if g.get("note") else ""), g.get("help", "")]
                   for n, g in gates.items()])
    if report.get("disabled_gates"):
        out += ["", "Off: " + ", ".join(f"`{n}`" for n in report["disabled_gates"])]

    t = m["teacher"]
    cp = t.get("code_predictor", {})
    out += ["", "## Teacher-forced fidelity (first codebook)", ""]
    out += _table(["frames", "KL mean", "KL p95", "KL max", "top-1", "top-5", "NLL ref", "NLL package",
                   "NLL increase", "CP top-1 (own hidden)", "CP top-1 (same hidden)"],
                  [[t.get("frames_scored"), t.get("kl_mean"), t.get("kl_p95"), t.get("kl_max"),
                    t.get("top1_agreement"), t.get("top5_agreement"), t.get("nll_reference"),
                    t.get("nll_package"), t.get("nll_increase"), cp.get("top1_own_hidden"),
                    cp.get("top1_same_hidden")]])
    if cp.get("per_codebook_own_hidden"):
        out += ["", "Code predictor top-1 per codebook 1-15 (own hidden): "
                + ", ".join(_fmt(v, 3) for v in cp["per_codebook_own_hidden"])]
    out += ["", f"Distributions over {t.get('restricted_to', 'the emitted ids')}, temperature 1."]

    s = m["stop"]
    out += ["", "## Stop signal (EOS)", ""]
    out += _table(["sequences", "ref stopped", "p(EOS) at stop ref", "p(EOS) at stop package", "ratio at stop",
                   "median per-seq ratio", f"ratio last {s.get('last_frames')} frames",
                   "package argmax EOS early", "first argmax EOS offset (mean)"],
                  [[s.get("sequences"), s.get("reference_stopped"), s.get("p_eos_at_stop_reference_mean"),
                    s.get("p_eos_at_stop_package_mean"), s.get("ratio_at_stop"),
                    s.get("ratio_at_stop_median_per_sequence"), s.get("ratio_last_frames"),
                    s.get("package_argmax_eos_early_count"), s.get("first_argmax_eos_offset_mean")]])
    if s.get("note"):
        out += ["", f"Note: {s['note']}"]

    f = m["freerun"]
    out += ["", "## Free-running duration (package / reference)", ""]
    rows = []
    for key in ("sentence", "long", "all"):
        st = f[key]
        rows.append([key, st["generations"], st["median_ratio"], st["p5_ratio"], st["p95_ratio"],
                     st["runaway_count"], st["package_hit_limit_count"], st["early_stop_count"],
                     st["reference_hit_limit_count"]])
    out += _table(["prompts", "generations", "median", "p5", "p95", "runaways", "hit limit", "early stops",
                   "reference hit limit"], rows)
    if f.get("note"):
        out += ["", f"Note: {f['note']}"]

    a = m["audio"]
    tf, spk, asr = a["teacher_forced"], a["speaker_similarity"], a["asr"]
    out += ["", "## Audio", ""]
    out += _table(["measure", "value"], [
        ["log-mel L1 (teacher-forced), mean / max", f"{_fmt(tf.get('log_mel_l1_mean'))} / {_fmt(tf.get('log_mel_l1_max'))}"],
        ["mel-cepstral distortion dB, mean / max", f"{_fmt(tf.get('mcd_mean'))} / {_fmt(tf.get('mcd_max'))}"],
        ["speaker similarity ref / package / drop",
         f"{_fmt(spk.get('reference_mean'))} / {_fmt(spk.get('package_mean'))} / {_fmt(spk.get('drop'))}"],
        ["resemblyzer similarity ref / package / drop",
         f"{_fmt(spk['resemblyzer'].get('reference_mean'))} / {_fmt(spk['resemblyzer'].get('package_mean'))} / "
         f"{_fmt(spk['resemblyzer'].get('drop'))} ({spk['resemblyzer'].get('note')})"],
        ["WER ref / package / increase",
         f"{_fmt(asr.get('wer_reference'))} / {_fmt(asr.get('wer_package'))} / {_fmt(asr.get('wer_increase'))}"
         if asr.get("measured") else asr.get("note", "not measured")],
        ["CER ref / package / increase",
         f"{_fmt(asr.get('cer_reference'))} / {_fmt(asr.get('cer_package'))} / {_fmt(asr.get('cer_increase'))}"
         if asr.get("measured") else asr.get("note", "not measured")],
    ])

    lay = m["layers"]
    out += ["", "## Per-linear error on held-out activations (AWQ vs RTN)", ""]
    out += [f"{lay.get('tokens')} tokens; mean relative error AWQ {_fmt(lay.get('awq_mean_relative_error'))}, "
            f"RTN {_fmt(lay.get('rtn_mean_relative_error'))}; AWQ <= RTN on "
            f"{_fmt(lay.get('awq_better_than_rtn_fraction'))} of the linears.", ""]
    out += _table(["worst linears", "AWQ", "RTN"], [[f"`{w['name']}`", w["awq"], w["rtn"]]
                                                   for w in lay.get("worst", [])])
    out += ["", f"Suggestion: {lay.get('suggestion')}"]

    p = report["package"]
    w = p["weights"]
    load = p.get("load", {})
    out += ["", "## Package", ""]
    out += _table(["measure", "value"], [
        ["size on disk (package / reference)",
         f"{_mib(p['disk_bytes'])} / {_mib(p['reference_disk_bytes'])} (ratio {_fmt(p.get('disk_ratio'))})"],
        ["INT4 linears", f"{w['quantized_linears']} ({w['quantized_weights']} weights)"],
        ["bits per weight, INT4 linears (measured)", _fmt(w.get("bits_per_weight_quantized"))],
        ["bits per weight, same linears in the reference", _fmt(p.get("quantized_linears_reference_bits_per_weight"))],
        ["bits per parameter, whole checkpoint", _fmt(w.get("bits_per_param_overall"))],
        ["load time", f"{_fmt(load.get('seconds'))} s ({load.get('loader')}, {load.get('dtype')}, {load.get('device')})"],
        ["peak memory during load", f"{_fmt(load.get('peak_rss_increase_mib'))} MiB RSS"
         + (f", {_fmt(load.get('peak_cuda_allocated_mib'))} MiB CUDA" if "peak_cuda_allocated_mib" in load else "")],
    ])

    out += ["", "## Per prompt", ""]
    prow = []
    for e in report["prompts"]:
        prow.append([f"`{e['id']}`", e["kind"], e["seed"], e["mode"], e["teacher"]["kl_mean"],
                     e["teacher"]["top1_agreement"], e["freerun"]["reference_frames"], e["freerun"]["package_frames"],
                     e["freerun"]["duration_ratio"],
                     "runaway" if e["freerun"]["runaway"] else ("early" if e["freerun"]["early_stop"] else ""),
                     e["stop"].get("p_eos_at_stop_reference"), e["stop"].get("p_eos_at_stop_package"),
                     e["audio"].get("sim_reference"), e["audio"].get("sim_package")])
    out += _table(["prompt", "kind", "seed", "mode", "KL", "top-1", "ref frames", "pkg frames", "ratio", "flag",
                   "p(EOS) ref", "p(EOS) pkg", "SIM ref", "SIM pkg"], prow)

    out += ["", "## Plots", ""]
    for title, name in report["plots"].items():
        out += [f"### {title}", "", f"![{title}]({name})", ""]
    out += [f"_tts-awq {report['tool']['version']}, created {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(report['created_unix']))}_", ""]
    return "\n".join(out)
