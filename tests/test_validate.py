"""validate-awq on the tiny checkpoint: a complete report, determinism, a package against itself, damaged packages
caught at the right gate, and bad input.

The tiny talker has random weights, so it is no TTS model: the gates for it come from a gates file here (the
defaults are for real checkpoints). Its codec_head EOS row is boosted (x3) in the reference so that, like a real
talker, it stops on its own within a few seconds and the stop signal can be measured.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tts_awq.checkpoint.files import sha256_file
from tts_awq.cli import main
from tts_awq.errors import UserError
from tts_awq.quantize.int4 import quantize, rtn
from tts_awq.quantize.pack import dequantize_gemm, pack_gemm
from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker
from tts_awq.testing.damage import copy_package, edit_weights, scale_eos_row
from tts_awq.validate import gates as gates_mod
from tts_awq.validate.runner import select_prompts, validate_package

N_PROMPTS = 3
MAX_NEW_TOKENS = 32
RUN = {"seeds": 1, "max_new_tokens": MAX_NEW_TOKENS, "n_prompts": N_PROMPTS, "device": "cpu"}
CLI_RUN = ["--seeds", "1", "--max-new-tokens", str(MAX_NEW_TOKENS), "--n-prompts", str(N_PROMPTS), "--device", "cpu"]
PLOTS = ("layer_errors.png", "duration_ratio.png", "kl_histogram.png", "mel_comparison.png")
#: Gates for the random tiny talker (measured: AWQ package kl_mean ~1e-3, top-1 0.67 on these 3 short prompts with
#: the fast engine, 0.8-0.9 over 48 jobs; 2-bit RTN damage kl_mean ~0.02, top-1 ~0.49; a zeroed EOS row stop
#: ratio ~0.06). Its free-running lengths
#: are geometric noise (p(EOS) ~1% per frame, trajectories diverge at the first differently sampled code), so the
#: runaway gate is off here; the damaged-package tests check the gates that must catch them.
TINY_GATES = {
    "runaway_count": None,
    "runaway_excess_upper95": None,
    "median_duration_ratio": [0.1, 10.0],
    "teacher_top1": 0.6,
    "kl_mean": 0.005,
    "speaker_similarity_drop": 0.1,
    "stop_signal_ratio": 0.5,
}
#: A package compared with itself must match exactly (runaways are the tiny talker's own, identical on both sides).
SELF_GATES = {
    "runaway_count": None,
    "runaway_excess_upper95": None,
    "median_duration_ratio": [1.0, 1.0],
    "teacher_top1": 1.0,
    "kl_mean": 1e-9,
    "speaker_similarity_drop": 1e-9,
    "stop_signal_ratio": {"op": ">=", "threshold": 0.999999},
    "log_mel_l1": 1e-9,
    "code_predictor_top1": 1.0,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def two_bit_rtn(group_size: int = 128) -> Any:
    """Round every INT4 talker weight to a 2-bit grid (RTN, same groups) and store it back in the INT4 format."""

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        for name in [n for n in tensors if n.endswith(".qweight")]:
            base = name.removesuffix(".qweight")
            weight = dequantize_gemm(tensors[name], tensors[f"{base}.qzeros"], tensors[f"{base}.scales"], group_size)
            qw = quantize(rtn(weight, bits=2, group_size=group_size), 4, group_size)
            tensors[name], tensors[f"{base}.qzeros"] = pack_gemm(qw.q, qw.zeros)
            tensors[f"{base}.scales"] = qw.scales.t().contiguous()

    return edit


def write_gates(path: Path, gates: dict[str, Any]) -> Path:
    path.write_text(json.dumps(gates), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(tiny_root: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Darwin blend with its EOS row boosted so it stops by itself (read-only in the tests)."""
    ref = shutil.copytree(tiny_root["tiny-darwin"], tmp_path_factory.mktemp("validate") / "tiny-darwin-stops")
    edit_weights(ref, scale_eos_row(3.0))
    return ref


@pytest.fixture(scope="module")
def package(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("validate-pkg") / "awq"
    return quantize_talker(QuantizeOptions(src=str(reference), out=out, n_samples=4, seq_len=32, calib_batch_size=4,
                                           device="cpu", progress=False))


@pytest.fixture(scope="module")
def tiny_gates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gates(tmp_path_factory.mktemp("gates") / "tiny-gates.json", TINY_GATES)


@pytest.fixture(scope="module")
def first_report(package: Path, reference: Path, tiny_gates: Path) -> dict[str, Any]:
    before = json.loads((package / "provenance.json").read_text())
    rep = validate_package(package, reference, gates=tiny_gates, **RUN)
    data = json.loads(rep.json_path.read_text())
    return {"report": rep, "data": data, "provenance_before": before}


# ------------------------------------------------------------------------------------------- complete report


def test_report_is_complete(package: Path, first_report: dict[str, Any]) -> None:
    data = first_report["data"]
    assert isinstance(data["passed"], bool) and isinstance(data["failed_gates"], list)
    assert list(data["gates"]) == [name for name, value in TINY_GATES.items() if value is not None]
    for gate in data["gates"].values():
        assert {"value", "threshold", "op", "passed"} <= set(gate)
    assert data["failed_gates"] == [n for n, g in data["gates"].items() if not g["passed"]]
    assert data["passed"] == (not data["failed_gates"])
    assert data["passed"], data["failed_gates"]  # a clean AWQ package passes the tiny gates

    metrics = data["metrics"]
    assert metrics["teacher"]["frames_scored"] > 0
    assert 0.0 <= metrics["teacher"]["kl_mean"] < 0.01
    assert len(metrics["teacher"]["code_predictor"]["per_codebook_own_hidden"]) == 15
    assert metrics["stop"]["reference_stopped"] >= 1, "the boosted-EOS tiny reference should stop by itself"
    assert metrics["stop"]["ratio_at_stop"] > 0
    for key in ("all", "sentence", "long"):
        assert {"median_ratio", "p5_ratio", "p95_ratio", "runaway_count", "early_stop_count"} <= set(
            metrics["freerun"][key])
    assert metrics["audio"]["teacher_forced"]["log_mel_l1_mean"] is not None
    assert metrics["audio"]["teacher_forced"]["mcd_mean"] is not None
    assert metrics["audio"]["speaker_similarity"]["drop"] is not None
    assert metrics["audio"]["asr"]["measured"] is False and "not measured" in metrics["audio"]["asr"]["note"]
    layers = metrics["layers"]
    assert len(layers["per_linear"]) == 4 * 7 and layers["suggestion"]
    assert all(e["awq"] >= 0 and e["rtn"] >= 0 for e in layers["per_linear"])

    pkg = data["package"]
    assert 4.0 < pkg["weights"]["bits_per_weight_quantized"] < 4.5
    assert pkg["quantized_linears_reference_bits_per_weight"] == 16.0
    assert pkg["disk_bytes"] > 0 and pkg["reference_disk_bytes"] > 0
    assert pkg["load"]["seconds"] > 0 and "peak_rss_increase_mib" in pkg["load"]

    assert len(data["prompts"]) == N_PROMPTS
    for entry in data["prompts"]:
        assert {"id", "kind", "seed", "teacher", "stop", "freerun", "audio"} <= set(entry)
    assert data["reference"]["path"] and data["reference"]["weights_sha256"]
    assert data["package_dir"]["path"] == str(package.resolve())

    directory = package / "validation"
    for name in PLOTS:
        blob = (directory / name).read_bytes()
        assert blob.startswith(b"\x89PNG\r\n\x1a\n") and len(blob) > 1000
        import matplotlib.image

        assert matplotlib.image.imread(str(directory / name)).ndim == 3
    md = (directory / "report.md").read_text()
    assert md.startswith("# validate-awq: PASS")
    for heading in ("## Gates", "## Teacher-forced fidelity", "## Stop signal", "## Free-running duration",
                    "## Audio", "## Per-linear error", "## Package", "## Per prompt", "## Plots"):
        assert heading in md
    assert md.index("## Gates") < md.index("## Teacher-forced") < md.index("## Plots")

    provenance = json.loads((package / "provenance.json").read_text())
    record = provenance.pop("validation")
    assert record["report_sha256"] == sha256_file(directory / "report.json") == first_report["report"].report_sha256
    assert record["passed"] is True and isinstance(record["created_unix"], int)
    before = dict(first_report["provenance_before"])
    before.pop("validation", None)
    assert provenance == before  # everything else untouched, outputs_sha256 included


def _stable(data: dict[str, Any]) -> dict[str, Any]:
    """Everything but wall-clock facts (timings, load time/memory, creation time)."""
    out = copy.deepcopy(data)
    for key in ("timings_s", "created_unix", "tool"):
        out.pop(key, None)
    out["metrics"].pop("throughput")
    out["package"].pop("load")
    out["package"].pop("reference_load")
    return out


def test_numbers_are_deterministic(package: Path, reference: Path, tiny_gates: Path,
                                   first_report: dict[str, Any]) -> None:
    shutil.rmtree(package / "validation" / "jobs")  # recompute every job (test_validate_scale covers the cache)
    again = validate_package(package, reference, gates=tiny_gates, **RUN)
    assert again.data["timings_s"]["jobs_computed_here"] == N_PROMPTS
    assert _stable(again.data) == _stable(first_report["data"])


# ------------------------------------------------------------------------------------------- self comparison


def test_package_against_itself_passes_exactly(package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    pkg = copy_package(package, tmp_path / "self")
    gates = write_gates(tmp_path / "self-gates.json", SELF_GATES)
    code = main(["validate-awq", str(pkg), "--reference", str(pkg), "--gates", str(gates), *CLI_RUN])
    data = json.loads((pkg / "validation" / "report.json").read_text())
    assert code == 0, data["failed_gates"]
    assert "PASS" in capsys.readouterr().out
    metrics = data["metrics"]
    assert metrics["teacher"]["kl_mean"] < 1e-9 and metrics["teacher"]["kl_max"] < 1e-9
    assert metrics["teacher"]["top1_agreement"] == 1.0
    assert all(e["freerun"]["duration_ratio"] == 1.0 for e in data["prompts"])
    assert metrics["freerun"]["all"]["median_ratio"] == 1.0
    assert metrics["stop"]["ratio_at_stop"] == pytest.approx(1.0, abs=1e-12)
    assert all(e["awq"] == 0.0 for e in metrics["layers"]["per_linear"])
    assert data["reference"]["kind"] == "tts-awq INT4 package"


# ------------------------------------------------------------------------------------------- damaged packages


def test_two_bit_damage_fails_fidelity_gates(package: Path, reference: Path, tiny_gates: Path, tmp_path: Path
                                             ) -> None:
    pkg = copy_package(package, tmp_path / "two-bit")
    edit_weights(pkg, two_bit_rtn())
    code = main(["validate-awq", str(pkg), "--reference", str(reference), "--gates", str(tiny_gates), *CLI_RUN])
    data = json.loads((pkg / "validation" / "report.json").read_text())
    assert code == 1
    assert {"kl_mean", "teacher_top1"} <= set(data["failed_gates"]), data["gates"]
    assert json.loads((pkg / "provenance.json").read_text())["validation"]["passed"] is False
    assert (pkg / "validation" / "report.md").read_text().startswith("# validate-awq: FAIL")


def test_weakened_eos_row_fails_stop_gate(package: Path, reference: Path, tiny_gates: Path, tmp_path: Path) -> None:
    pkg = copy_package(package, tmp_path / "no-eos")
    edit_weights(pkg, scale_eos_row(0.0))
    code = main(["validate-awq", str(pkg), "--reference", str(reference), "--gates", str(tiny_gates), *CLI_RUN])
    data = json.loads((pkg / "validation" / "report.json").read_text())
    assert code == 1
    assert "stop_signal_ratio" in data["failed_gates"], data["gates"]
    assert data["gates"]["stop_signal_ratio"]["value"] < 0.2
    assert data["metrics"]["freerun"]["all"]["package_hit_limit_count"] == N_PROMPTS  # it no longer stops


# ------------------------------------------------------------------------------------------- bad input


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_package_is_exit_2(reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-awq", str(tmp_path / "nope"), "--reference", str(reference)]) == 2
    assert "package directory not found" in _one_line_error(capsys)


def test_reference_of_another_architecture_is_exit_2(package: Path, reference: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    other = shutil.copytree(reference, tmp_path / "other",  # no talker weights; the codec (checked first) stays
                            ignore=lambda d, names: [n for n in names if n.endswith(".safetensors")
                                                     and Path(d) == Path(reference)])
    config = json.loads((other / "config.json").read_text())
    config["talker_config"]["num_hidden_layers"] += 2
    config["talker_config"]["hidden_size"] *= 2
    (other / "config.json").write_text(json.dumps(config))
    pkg = copy_package(package, tmp_path / "pkg")
    assert main(["validate-awq", str(pkg), "--reference", str(other)]) == 2
    assert "another architecture" in _one_line_error(capsys)
    assert not (pkg / "validation").exists()


@pytest.mark.parametrize("content", ["{not: valid: yaml: [", "kl_mean: [1, 2, 3]\n", "no_such_gate: 1\n", None])
def test_bad_gates_file_is_exit_2(package: Path, reference: Path, tmp_path: Path, content: str | None,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gates.yaml"
    if content is not None:
        path.write_text(content)
    pkg = copy_package(package, tmp_path / "pkg")
    assert main(["validate-awq", str(pkg), "--reference", str(reference), "--gates", str(path)]) == 2
    _one_line_error(capsys)
    assert not (pkg / "validation").exists()


def test_plain_checkpoint_as_package_is_exit_2(reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-awq", str(reference), "--reference", str(reference)]) == 2
    assert "quantization_config" in _one_line_error(capsys)


# ------------------------------------------------------------------------------------------- gates and prompts


def test_gate_overrides() -> None:
    gates = gates_mod.parse_overrides({"gates": {"kl_mean": 0.2, "median_duration_ratio": 0.25,
                                                 "runaway_count": None, "kl_p95": {"threshold": 0.5},
                                                 "teacher_top1": {"enabled": False}}})
    assert gates["kl_mean"].threshold == 0.2 and gates["kl_mean"].op == "<="
    assert gates["median_duration_ratio"].threshold == [0.75, 1.25]
    assert not gates["runaway_count"].enabled and not gates["teacher_top1"].enabled
    assert gates["kl_p95"].enabled and gates["stop_signal_ratio"].threshold == 0.5
    results = gates_mod.evaluate_gates(gates, {"teacher": {"kl_mean": 0.3, "kl_p95": 0.1},
                                               "freerun": {"sentence": {"median_ratio": 1.2}}})
    assert results["kl_mean"]["passed"] is False and results["kl_p95"]["passed"] is True
    assert results["median_duration_ratio"]["passed"] is True
    assert results["stop_signal_ratio"] == {**results["stop_signal_ratio"], "passed": False, "note": "not measured"}
    assert "runaway_count" not in results
    with pytest.raises(UserError, match="unknown gate"):
        gates_mod.parse_overrides({"kl": 0.1})
    with pytest.raises(UserError, match="not a finite number"):
        gates_mod.parse_overrides({"kl_mean": "low"})
    with pytest.raises(UserError, match="does not fit"):
        gates_mod.parse_overrides({"kl_mean": {"op": "in", "threshold": [0, 1]}})


def test_gates_yaml_and_json_files(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text("gates:\n  kl_mean: 0.05\n  teacher_top1: 0.95\n")
    (tmp_path / "g.json").write_text(json.dumps({"kl_mean": 0.05, "teacher_top1": 0.95}))
    assert gates_mod.load_gates(tmp_path / "g.yaml") == gates_mod.load_gates(tmp_path / "g.json")
    assert gates_mod.load_gates(None) == gates_mod.default_gates()
    defaults = {n: (g.op, g.threshold) for n, g in gates_mod.default_gates().items() if g.enabled}
    assert defaults == {"runaway_excess_upper95": ("<=", 0.03), "median_duration_ratio": ("in", [0.9, 1.1]),
                        "teacher_top1": (">=", 0.9), "kl_mean": ("<=", 0.1),
                        "speaker_similarity_drop": ("<=", 0.02), "stop_signal_ratio": (">=", 0.5)}


def test_select_prompts_spreads_and_keeps_long_form() -> None:
    from tts_awq.prompts import load_prompts

    prompts, _ = load_prompts(split="eval")
    chosen = select_prompts(prompts, 6)
    assert len(chosen) == 6 and len({p.id for p in chosen}) == 6
    assert any(p.kind == "long" for p in chosen)
    assert [p.id for p in chosen] == [p.id for p in prompts if p in chosen]  # file order
    assert select_prompts(prompts, None) == prompts and select_prompts(prompts, 500) == prompts


def test_runaway_is_not_blamed_on_the_package_when_the_reference_also_hit_the_limit() -> None:
    from types import SimpleNamespace

    from tts_awq.validate.freerun import pair

    job = SimpleNamespace(prompt=SimpleNamespace(kind="sentence"))
    both = pair(job, SimpleNamespace(frames=64, stopped=False), SimpleNamespace(frames=64, stopped=False))
    assert both["censored"] and not both["runaway"]
    only_pkg = pair(job, SimpleNamespace(frames=20, stopped=True), SimpleNamespace(frames=64, stopped=False))
    assert only_pkg["runaway"] and not only_pkg["censored"]
    long_pkg = pair(job, SimpleNamespace(frames=20, stopped=True), SimpleNamespace(frames=41, stopped=True))
    assert long_pkg["runaway"] and long_pkg["duration_ratio"] == 41 / 20
