"""The report: ``report.json`` (the machine contract), ``report.md`` (for people) and the provenance record.

Contract of ``report.json`` (kept stable for ``tts-awq push``): top-level ``passed`` (bool), ``failed_gates``
(names), ``gates`` (``{name: {value, threshold, op, passed, ...}}``), ``package`` (facts), ``prompts`` (one entry
per prompt and seed), ``reference`` and ``package_dir`` (identities). The package's ``provenance.json`` gains a
top-level ``validation`` entry ``{report_sha256, passed, created_unix, ...}``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tts_awq import __version__
from tts_awq.checkpoint.atomic import atomic_output_dir
from tts_awq.checkpoint.files import hash_tree, list_files, sha256_file, write_json
from tts_awq.errors import UserError, naming_path
from tts_awq.formatting import fmt_number, human_bytes, md_table
from tts_awq.provenance import PROVENANCE_NAME, git_commit, library_versions
from tts_awq.qwen_tts import default_dtype
from tts_awq.validate import gates as gates_mod
from tts_awq.validate import jobcache, plots
from tts_awq.validate.collect import JobRecord
from tts_awq.validate.package import VALIDATION_DIR

if TYPE_CHECKING:
    from tts_awq.validate.runner import Run

SCHEMA = "tts-awq/validation-report/1"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
KEEP_BF16 = "keep_bf16.txt"


@dataclass
class Report:
    """The written report: ``data`` is exactly what ``report.json`` holds."""

    data: dict[str, Any]
    directory: Path  # OUT/validation
    report_sha256: str

    @property
    def passed(self) -> bool:
        return bool(self.data["passed"])

    @property
    def failed_gates(self) -> list[str]:
        return list(self.data["failed_gates"])

    @property
    def json_path(self) -> Path:
        return self.directory / REPORT_JSON

    @property
    def markdown_path(self) -> Path:
        return self.directory / REPORT_MD


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
    try:
        with naming_path(tmp):
            write_json(tmp, data)
            tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves provenance.json as it was and no temp file
        raise


# ---------------------------------------------------------------------------------------------- assemble + write


def assemble(run: Run, metrics: dict[str, Any], facts: dict[str, Any], gate_results: dict[str, Any]
             ) -> dict[str, Any]:
    """The ``report.json`` content (without plots and timings, which :func:`write` adds)."""
    failed = [name for name, g in gate_results.items() if not g["passed"]]
    return {
        "schema": SCHEMA,
        "passed": not failed,
        "failed_gates": failed,
        "gates": gate_results,
        "disabled_gates": gates_mod.disabled_gates(run.gates),
        **run.identities,
        "eval": run.eval_info,
        "settings": {
            **run.settings.to_dict(),
            "dtype": str(default_dtype(run.settings.device)).removeprefix("torch."),
            "asr_model": run.asr_model,
            "sampling": "qwen-tts generation defaults of the package's generation_config.json",
            "batching": ("fast engine: --batch-size jobs decode at once, a slot refilled when a job stops; each job "
                         "draws from its own generator (seeded from its seed and request), so its codes do not "
                         "depend on the batch" if run.settings.engine == "fast" else
                         "one padded batch per model per group of --batch-size jobs, seeded with its first job's "
                         "seed; results are deterministic for a given batch size"),
        },
        "metrics": metrics,
        "package": facts,
        "prompts": [],  # filled by write() from the records
        "tool": {"name": "tts-awq", "version": __version__, "git_commit": git_commit()},
        "libraries": library_versions(),
        "created_unix": int(time.time()),
    }


PLOTS = {
    "Per-linear relative error, AWQ vs RTN": plots.LAYER_ERRORS,
    "Duration ratio per prompt": plots.DURATION_RATIO,
    "Teacher-forced KL per frame": plots.KL_HISTOGRAM,
    "Reference vs package mel spectrogram": plots.MEL_COMPARISON,
}


def _write_plots(tmp: Path, data: dict[str, Any], records: list[JobRecord], kl: np.ndarray) -> None:
    plots.layer_errors(data["metrics"]["layers"]["per_linear"], tmp / plots.LAYER_ERRORS)
    plots.duration_ratio([r.data["freerun"] for r in records], tmp / plots.DURATION_RATIO)
    plots.kl_histogram(kl, tmp / plots.KL_HISTOGRAM)
    first = records[0] if records else None
    if first is not None and "mel_reference" in first.arrays:
        plots.mel_comparison(first.arrays["mel_reference"], first.arrays["mel_package"],
                             f"teacher-forced audio, {first.key}", tmp / plots.MEL_COMPARISON)
    data["plots"] = {title: name for title, name in PLOTS.items() if (tmp / name).is_file()}


def keep_bf16_lines(layer_report: dict[str, Any]) -> list[str]:
    """``validation/keep_bf16.txt``: the linears the layer scan suggests keeping dense, one per line, for
    ``quantize-talker --keep-bf16 FILE``."""
    return [str(name) for name in layer_report.get("keep_in_bf16", [])]


def write(run: Run, data: dict[str, Any], records: list[JobRecord], kl: np.ndarray, started: float) -> Report:
    """Write OUT/validation atomically (the job cache moves into the new directory) and record it in provenance."""
    root = run.package.root
    data["prompts"] = [{k: v for k, v in r.data.items() if k not in ("timing_s", "batch_size")}
                       for r in sorted(records, key=lambda r: r.number)]
    with atomic_output_dir(root / VALIDATION_DIR, overwrite=True) as tmp, naming_path(root / VALIDATION_DIR):
        t = time.perf_counter()
        _write_plots(tmp, data, records, kl)
        (tmp / KEEP_BF16).write_text("".join(f"{n}\n" for n in keep_bf16_lines(data["metrics"]["layers"])),
                                     encoding="utf-8")
        run.timings["plots"] = round(time.perf_counter() - t, 3)
        run.timings["total"] = round(time.perf_counter() - started, 3)
        data["timings_s"] = dict(run.timings)  # machine-dependent, not deterministic
        sha = write_json_report(data, tmp / REPORT_JSON)
        (tmp / REPORT_MD).write_text(markdown(data), encoding="utf-8")
        if run.cache.is_dir():  # keep the resumable job records with the report that used them
            os.replace(run.cache, tmp / jobcache.JOBS_DIR)
    listed = [r for r in list_files(root) if r.startswith(f"{VALIDATION_DIR}/")
              and not r.startswith(f"{VALIDATION_DIR}/{jobcache.JOBS_DIR}/")]
    record_in_provenance(root, {
        "report_sha256": sha, "files": hash_tree(root, listed), "passed": data["passed"],
        "failed_gates": data["failed_gates"], "created_unix": data["created_unix"],
        "report": f"{VALIDATION_DIR}/{REPORT_JSON}", "reference": data["reference"]["spec"],
    })
    return Report(data=clean(data), directory=root / VALIDATION_DIR, report_sha256=sha)


# ---------------------------------------------------------------------------------------------- Markdown

_fmt = fmt_number


def _threshold(gate: dict[str, Any]) -> str:
    if gate["op"] == "in":
        low, high = gate["threshold"]
        return f"in [{_fmt(low)}, {_fmt(high)}]"
    return f"{gate['op']} {_fmt(gate['threshold'])}"


def _ci(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "n/a"
    return f"{_fmt(entry.get('mean', entry.get('median')))} [{_fmt(entry.get('lo'))}, {_fmt(entry.get('hi'))}]"


def _rate(entry: dict[str, Any]) -> str:
    return f"{entry['k']}/{entry['n']} = {_fmt(entry['rate'])} [{_fmt(entry['lo'])}, {_fmt(entry['hi'])}]"


def _md_header(report: dict[str, Any]) -> list[str]:
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
    ev, st = report["eval"], report["settings"]
    out += [
        f"- package: `{report['package_dir']['path']}`",
        f"- reference: `{report['reference']['spec']}` ({report['reference']['kind']})",
        f"- profile {st['profile']}: {ev['n_prompts']} prompts x {len(ev['seeds'])} seeds from {ev['source']}, "
        f"max_new_tokens {ev['max_new_tokens']}, batch size {st['batch_size']}, engine {st['engine']}, "
        f"device {st['device']}, dtype {st['dtype']}",
        "", "## Gates", "",
    ]
    out += md_table(["gate", "value", "threshold", "result", "what it measures"],
                    [[f"`{n}`", g["value"], _threshold(g), ("pass" if g["passed"] else "**FAIL**")
                      + (f" ({g['note']})" if g.get("note") else ""), g.get("help", "")]
                     for n, g in gates.items()])
    if report.get("disabled_gates"):
        out += ["", "Off: " + ", ".join(f"`{n}`" for n in report["disabled_gates"])]
    return out


def _md_runaway(r: dict[str, Any]) -> list[str]:
    res = r["resolution"]
    needed = ", ".join(f"{n} per side for an excess of {e}" for e, n in res["generations_needed"].items())
    out = ["", "## Runaways (never stopped within max_new_tokens)", ""]
    out += md_table(["side", "runaways (95 % Clopper-Pearson)", "early stops (95 % CP)"], [
        ["package", _rate(r["package"]), _rate(r["early_stop"]["package"])],
        ["reference", _rate(r["reference"]), _rate(r["early_stop"]["reference"])],
    ])
    out += ["", f"Excess (package - reference) {_fmt(r['excess'])}, 95 % upper bound {_fmt(r['excess_upper95'])} "
            f"({r['excess_upper95_method']}); one-sided exact p-values: Fisher {_fmt(r['excess_p_value_fisher'])}, "
            f"paired McNemar {_fmt(r['paired']['p_value_exact_mcnemar'])} ({r['paired']['package_only']} package-only"
            f" vs {r['paired']['reference_only']} reference-only runaways).",
            "", f"With {r['generations']} generations the smallest excess detectable (alpha 0.05, power 0.8) at the "
            f"measured reference rate {_fmt(res['at_reference_rate'])} is {_fmt(res['resolvable_excess_with_n'])}; "
            f"needed: {needed}."]
    return out


def _md_teacher(t: dict[str, Any]) -> list[str]:
    cp = t.get("code_predictor", {})
    out = ["", "## Teacher-forced fidelity (first codebook)", ""]
    out += md_table(["frames", "KL mean", "KL p95", "KL max", "top-1", "top-5", "NLL ref", "NLL package",
                     "NLL increase", "CP top-1 (own hidden)", "CP top-1 (same hidden)"],
                    [[t.get("frames_scored"), t.get("kl_mean"), t.get("kl_p95"), t.get("kl_max"),
                      t.get("top1_agreement"), t.get("top5_agreement"), t.get("nll_reference"),
                      t.get("nll_package"), t.get("nll_increase"), cp.get("top1_own_hidden"),
                      cp.get("top1_same_hidden")]])
    out += ["", f"Per-generation means with 95 % bootstrap intervals: KL {_ci(t.get('kl_mean_per_generation_ci95'))}, "
            f"top-1 {_ci(t.get('top1_agreement_per_generation_ci95'))}."]
    if cp.get("per_codebook_own_hidden"):
        out += ["", "Code predictor top-1 per codebook 1-15 (own hidden): "
                + ", ".join(_fmt(v, 3) for v in cp["per_codebook_own_hidden"])]
    out += ["", f"Distributions over {t.get('restricted_to', 'the emitted ids')}, temperature 1."]
    return out


def _md_stop(s: dict[str, Any]) -> list[str]:
    out = ["", "## Stop signal (EOS)", ""]
    out += md_table(["sequences", "ref stopped", "p(EOS) at stop ref", "p(EOS) at stop package", "ratio at stop",
                     "median per-seq ratio", f"ratio last {s.get('last_frames')} frames",
                     "package argmax EOS early", "first argmax EOS offset (mean)"],
                    [[s.get("sequences"), s.get("reference_stopped"), s.get("p_eos_at_stop_reference_mean"),
                      s.get("p_eos_at_stop_package_mean"), s.get("ratio_at_stop"),
                      s.get("ratio_at_stop_median_per_sequence"), s.get("ratio_last_frames"),
                      s.get("package_argmax_eos_early_count"), s.get("first_argmax_eos_offset_mean")]])
    return out + (["", f"Note: {s['note']}"] if s.get("note") else [])


def _md_freerun(f: dict[str, Any]) -> list[str]:
    out = ["", "## Free-running duration (package / reference)", ""]
    out += md_table(["prompts", "generations", "median", "p5", "p95", "runaways", "hit limit", "early stops",
                     "reference hit limit"],
                    [[key, st["generations"], st["median_ratio"], st["p5_ratio"], st["p95_ratio"],
                      st["runaway_count"], st["package_hit_limit_count"], st["early_stop_count"],
                      st["reference_hit_limit_count"]] for key in ("sentence", "long", "all") for st in [f[key]]])
    out += ["", f"Sentence median ratio with 95 % bootstrap interval: {_ci(f.get('sentence_median_ratio_ci95'))}."]
    return out + (["", f"Note: {f['note']}"] if f.get("note") else [])


def _pair(a: Any, b: Any, c: Any) -> str:
    return f"{_fmt(a)} / {_fmt(b)} / {_fmt(c)}"


def _md_audio(a: dict[str, Any]) -> list[str]:
    tf, spk, asr = a["teacher_forced"], a["speaker_similarity"], a["asr"]
    rz = spk["resemblyzer"]
    out = ["", "## Audio", ""]
    out += md_table(["measure", "value"], [
        ["log-mel L1 (teacher-forced), mean / max", f"{_fmt(tf.get('log_mel_l1_mean'))} / {_fmt(tf.get('log_mel_l1_max'))}"],
        ["mel-cepstral distortion dB, mean / max", f"{_fmt(tf.get('mcd_mean'))} / {_fmt(tf.get('mcd_max'))}"],
        ["speaker similarity ref / package / drop", _pair(spk.get("reference_mean"), spk.get("package_mean"), spk.get("drop"))],
        ["resemblyzer similarity ref / package / drop",
         f"{_pair(rz.get('reference_mean'), rz.get('package_mean'), rz.get('drop'))} ({rz.get('note')})"],
        ["WER ref / package / increase", _pair(asr.get("wer_reference"), asr.get("wer_package"), asr.get("wer_increase"))
         if asr.get("measured") else asr.get("note", "not measured")],
        ["CER ref / package / increase", _pair(asr.get("cer_reference"), asr.get("cer_package"), asr.get("cer_increase"))
         if asr.get("measured") else asr.get("note", "not measured")],
    ])
    return out


def _md_layers(lay: dict[str, Any]) -> list[str]:
    out = ["", "## Per-linear error on held-out activations (AWQ vs RTN)", ""]
    out += [f"{lay.get('tokens')} tokens; mean relative error AWQ {_fmt(lay.get('awq_mean_relative_error'))}, "
            f"RTN {_fmt(lay.get('rtn_mean_relative_error'))}; AWQ <= RTN on "
            f"{_fmt(lay.get('awq_better_than_rtn_fraction'))} of the linears.", ""]
    out += md_table(["worst linears", "AWQ", "RTN"], [[f"`{w['name']}`", w["awq"], w["rtn"]]
                                                     for w in lay.get("worst", [])])
    keep = lay.get("keep_in_bf16") or []
    kept = lay.get("kept_bf16_in_package") or []
    if kept:
        out += ["", f"Kept dense (BF16) in this package: {len(kept)} linear(s): "
                + ", ".join(f"`{n}`" for n in kept)]
    out += ["", f"Suggestion: {lay.get('suggestion')}",
            "", f"`{KEEP_BF16}` lists {len(keep)} linear(s) to keep dense (reason: {lay.get('keep_in_bf16_reason')}); "
            f"re-quantize with `quantize-talker SRC OUT --keep-bf16 OUT/validation/{KEEP_BF16}`."]
    return out


def _md_package(p: dict[str, Any], throughput: dict[str, Any]) -> list[str]:
    w, load = p["weights"], p.get("load", {})
    out = ["", "## Package", ""]
    out += md_table(["measure", "value"], [
        ["size on disk (package / reference)", f"{human_bytes(p['disk_bytes'])} / "
         f"{human_bytes(p['reference_disk_bytes'])} (ratio {_fmt(p.get('disk_ratio'))})"],
        ["INT4 linears", f"{w['quantized_linears']} ({w['quantized_weights']} weights)"],
        ["bits per weight, INT4 linears (measured)", _fmt(w.get("bits_per_weight_quantized"))],
        ["bits per weight, same linears in the reference", _fmt(p.get("quantized_linears_reference_bits_per_weight"))],
        ["bits per parameter, whole checkpoint", _fmt(w.get("bits_per_param_overall"))],
        ["load time", f"{_fmt(load.get('seconds'))} s ({load.get('loader')}, {load.get('dtype')}, {load.get('device')})"],
        ["peak memory during load", f"{_fmt(load.get('peak_rss_increase_mib'))} MiB RSS"
         + (f", {_fmt(load.get('peak_cuda_allocated_mib'))} MiB CUDA" if "peak_cuda_allocated_mib" in load else "")],
        ["generation wall time per job (both models), mean / p95",
         f"{_fmt(throughput.get('generate_seconds_per_job_mean'))} / "
         f"{_fmt(throughput.get('generate_seconds_per_job_p95'))} s at batch sizes {throughput.get('batch_sizes')}"],
    ])
    return out


def _md_prompts(prompts: list[dict[str, Any]]) -> list[str]:
    rows = [[f"`{e['id']}`", e["kind"], e["seed"], e["mode"], e["teacher"]["kl_mean"], e["teacher"]["top1_agreement"],
             e["freerun"]["reference_frames"], e["freerun"]["package_frames"], e["freerun"]["duration_ratio"],
             "runaway" if e["freerun"]["runaway"] else ("early" if e["freerun"]["early_stop"] else ""),
             e["stop"].get("p_eos_at_stop_reference"), e["stop"].get("p_eos_at_stop_package"),
             e["audio"].get("sim_reference"), e["audio"].get("sim_package")] for e in prompts]
    return ["", "## Per prompt", ""] + md_table(
        ["prompt", "kind", "seed", "mode", "KL", "top-1", "ref frames", "pkg frames", "ratio", "flag",
         "p(EOS) ref", "p(EOS) pkg", "SIM ref", "SIM pkg"], rows)


def markdown(report: dict[str, Any]) -> str:
    m = report["metrics"]
    out = _md_header(report)
    out += _md_runaway(m["runaway"]) + _md_teacher(m["teacher"]) + _md_stop(m["stop"]) + _md_freerun(m["freerun"])
    out += _md_audio(m["audio"]) + _md_layers(m["layers"]) + _md_package(report["package"], m.get("throughput", {}))
    out += _md_prompts(report["prompts"])
    out += ["", "## Plots", ""]
    for title, name in report.get("plots", {}).items():
        out += [f"### {title}", "", f"![{title}]({name})", ""]
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report["created_unix"]))
    out += [f"_tts-awq {report['tool']['version']}, created {created}_", ""]
    return "\n".join(out)
