"""--keep-bf16 / --keep-bf16-budget: mixed packages (some decoder Linears dense) are written, described, loaded
and numerically closer to the source than all-INT4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tts_awq
from tts_awq.checkpoint import TensorStore, detect_layout
from tts_awq.cli import quantize_talker_main
from tts_awq.errors import EXIT_USER, UserError
from tts_awq.prompts import load_voice_clips, read_voice
from tts_awq.quantize.decoder import DecoderRunner
from tts_awq.quantize.engine import AwqOptions, search_layer
from tts_awq.quantize.evaluate import layer_tensors, relative_error
from tts_awq.quantize.keep import KeepPlan, resolve_keep_bf16
from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker
from tts_awq.quantize.search_state import SEARCH_STATE_NAME, read_search_state
from tts_awq.quantize.sensitivity import LinearScore, choose_within_budget, combined_rank, int4_bytes

FAST = {"n_samples": 6, "seq_len": 40, "device": "cpu", "progress": False, "calib_batch_size": 6}
CLI_FAST = ["--n-samples", "6", "--seq-len", "40", "--calib-batch-size", "6", "--device", "cpu"]
MLP0 = [f"talker.model.layers.0.mlp.{n}_proj" for n in ("gate", "up", "down")]
Q1 = "talker.model.layers.1.self_attn.q_proj"
BUDGET_MB = 0.2


@pytest.fixture(scope="module")
def darwin(tiny_root: dict[str, Path]) -> Path:
    return tiny_root["tiny-darwin"]


@pytest.fixture(scope="module")
def packages(darwin: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keep")
    keep_file = root / "keep_bf16.txt"
    keep_file.write_text(f"# written by validate-awq\n\n{Q1}   # worst linear\n", encoding="utf-8")
    assert quantize_talker_main([str(darwin), str(root / "mlp0"), *CLI_FAST, "--keep-bf16", "*.layers.0.mlp.*"]) == 0
    return {
        "int4": quantize_talker(QuantizeOptions(src=str(darwin), out=root / "int4", **FAST)),
        "mlp0": root / "mlp0",
        "q1": quantize_talker(QuantizeOptions(src=str(darwin), out=root / "q1", keep_bf16=(str(keep_file),), **FAST)),
        "budget": quantize_talker(QuantizeOptions(src=str(darwin), out=root / "budget",
                                                  keep_bf16_budget_mb=BUDGET_MB, **FAST)),
    }


def _prov(package: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((package / "provenance.json").read_text())


def _modules_to_not_convert(package: Path) -> list[str]:
    return json.loads((package / "config.json").read_text())["quantization_config"]["modules_to_not_convert"]


def test_glob_kept_linears_are_the_source_bytes(darwin: Path, packages: dict[str, Path]) -> None:
    """The whole MLP of layer 0 kept: its scale groups have nothing to protect (s = 1), so the kept weights and
    the post-attention norm are exactly the source's."""
    src, pkg = TensorStore(darwin), TensorStore(packages["mlp0"])
    for name in MLP0:
        assert f"{name}.qweight" not in pkg and f"{name}.scales" not in pkg
        assert pkg.info(f"{name}.weight").dtype == "BF16"
        assert torch.equal(pkg.get(f"{name}.weight"), src.get(f"{name}.weight")), name
    norm = "talker.model.layers.0.post_attention_layernorm.weight"
    assert torch.equal(pkg.get(norm), src.get(norm))
    assert "talker.model.layers.0.self_attn.q_proj.qweight" in pkg  # the rest is INT4
    assert _modules_to_not_convert(packages["mlp0"])[-3:] == MLP0
    kept = _prov(packages["mlp0"])["kept_bf16"]
    assert kept["names"] == MLP0 and set(kept["reasons"].values()) == {"--keep-bf16 *.layers.0.mlp.*"}
    info = src.info(f"{MLP0[2]}.weight")
    assert kept["sizes"][MLP0[2]] == {"dense_bytes": info.nbytes, "int4_bytes": int4_bytes(*info.shape, 128),
                                      "extra_bytes": info.nbytes - int4_bytes(*info.shape, 128)}
    assert kept["extra_bytes"] == sum(s["extra_bytes"] for s in kept["sizes"].values()) > 0
    state = read_search_state(packages["mlp0"] / SEARCH_STATE_NAME)
    assert state.keep_bf16 == sorted(MLP0)
    assert torch.equal(state.layers[0]["scales.post_attention_layernorm"], torch.ones(128))
    assert not any(k.startswith("clip.mlp.") for k in state.layers[0])
    assert _prov(packages["mlp0"])["modules"]["quantized_count"] == 4 * 7 - 3


def test_file_kept_linear_in_a_mixed_group_carries_the_scales(darwin: Path, packages: dict[str, Path]) -> None:
    """q_proj kept while k/v are INT4: the shared norm is divided by s, so the dense q_proj is stored as W·s."""
    src, pkg = TensorStore(darwin), TensorStore(packages["q1"])
    s = read_search_state(packages["q1"] / SEARCH_STATE_NAME).layers[1]["scales.input_layernorm"]
    assert not torch.equal(s, torch.ones_like(s))  # the group was scaled
    w = src.get(f"{Q1}.weight")
    assert torch.equal(pkg.get(f"{Q1}.weight"), (w.float() * s[None, :]).to(torch.bfloat16))
    kept = _prov(packages["q1"])["kept_bf16"]
    assert kept["names"] == [Q1] and kept["reasons"][Q1].startswith("--keep-bf16 ") and kept["reasons"][Q1].endswith(
        "keep_bf16.txt")


def test_mixed_group_layer_function_is_the_source_one(darwin: Path) -> None:
    """Before quantization the scaled layer with q_proj kept dense computes the source layer (fp32 rounding);
    keeping q_proj's source weight instead (no W·s) would not."""
    store = TensorStore(darwin)
    spec = detect_layout(darwin).decoder
    runner = DecoderRunner(spec)
    tensors = {k: v.float() for k, v in store.get_prefix(f"{spec.layer_prefix}1.").items()}
    xs = [torch.randn(n, spec.hidden_size, generator=torch.Generator().manual_seed(n)) for n in (20, 13)]
    reference = runner.run_layer(runner.build_layer(dict(tensors), 1), xs)
    done = search_layer(runner, runner.build_layer(dict(tensors), 1), xs, AwqOptions(clip=False),
                        keep=frozenset({"self_attn.q_proj"}))
    assert done.stats["scale.input_layernorm"]["ratio"] != -1.0
    assert not torch.equal(done.weights["self_attn.q_proj.weight"], tensors["self_attn.q_proj.weight"])
    scaled = runner.run_layer(runner.build_layer(dict(done.weights), 1), xs)
    assert relative_error(reference, scaled) < 1e-5
    wrong = {**done.weights, "self_attn.q_proj.weight": tensors["self_attn.q_proj.weight"]}
    assert relative_error(reference, runner.run_layer(runner.build_layer(wrong, 1), xs)) > 1e-3


def test_kept_layer_output_error_is_below_all_int4(darwin: Path, packages: dict[str, Path]) -> None:
    spec = detect_layout(darwin).decoder
    runner = DecoderRunner(spec)
    xs = [torch.randn(n, spec.hidden_size, generator=torch.Generator().manual_seed(n)) for n in (37, 25)]

    def layer0_output(root: Path) -> list[torch.Tensor]:
        return runner.run_layer(runner.build_layer(layer_tensors(TensorStore(root), spec)(0), 0), xs)

    reference = layer0_output(darwin)
    err_int4 = relative_error(reference, layer0_output(packages["int4"]))
    err_kept = relative_error(reference, layer0_output(packages["mlp0"]))
    assert 0 < err_kept < err_int4, (err_kept, err_int4)


def test_budget_picks_the_most_sensitive_within_the_budget(darwin: Path, packages: dict[str, Path]) -> None:
    prov = _prov(packages["budget"])
    kept = prov["kept_bf16"]
    scan = kept["scan"]
    assert len(scan) == 4 * 7 and kept["budget_bytes"] == int(BUDGET_MB * 10**6)
    assert [e["rank"] for e in scan] == sorted((e["rank"] for e in scan), reverse=True)
    assert all(e["eos_shift"] is not None for e in scan)  # a TTS talker: the stop-signal score was scanned
    assert {e["name"]: e["rank"] for e in scan} == pytest.approx(combined_rank([LinearScore(**e) for e in scan]))
    picked = [e["name"] for e in scan if e["kept"]]
    assert picked and sorted(picked) == sorted(kept["names"]) and set(kept["reasons"].values()) == {"budget"}
    assert kept["extra_bytes"] == sum(e["extra_bytes"] for e in scan if e["kept"]) <= kept["budget_bytes"]
    assert scan[0]["kept"]  # the most sensitive fits
    left = kept["budget_bytes"] - kept["extra_bytes"]
    assert all(e["extra_bytes"] > left for e in scan if not e["kept"])  # nothing else would have fit
    assert _modules_to_not_convert(packages["budget"])[4:] == kept["names"]
    pkg = TensorStore(packages["budget"])
    for name in kept["names"]:
        assert f"{name}.weight" in pkg and f"{name}.qweight" not in pkg
    assert "sensitivity_scan" in prov["timings_s"] and "eos_shift_scan" in prov["timings_s"]


@pytest.mark.parametrize("which", ["mlp0", "budget"])
def test_mixed_package_loads_and_generates(packages: dict[str, Path], which: str) -> None:
    from tts_awq.quantize.linear import AwqInt4Linear

    package = packages[which]
    kept = _prov(package)["kept_bf16"]["names"]
    tts = tts_awq.load_quantized(package, device="cpu", kernel="dequant", verify=True)
    model = tts.model
    for name in kept:
        module = model.get_submodule(name)
        assert type(module) is torch.nn.Linear and module.weight.dtype == torch.float32
    assert sum(tts.tts_awq_kernels.values()) == 4 * 7 - len(kept)
    assert isinstance(model.get_submodule("talker.model.layers.3.mlp.up_proj"), AwqInt4Linear) or (
        "talker.model.layers.3.mlp.up_proj" in kept)
    wav, sr = read_voice(load_voice_clips()[0])
    torch.manual_seed(0)
    wavs, out_sr = tts.generate_voice_clone(text="Hello there.", language="english", ref_audio=(wav, sr),
                                            x_vector_only_mode=True, max_new_tokens=12)
    audio = np.asarray(wavs[0])
    assert out_sr == 24000 and np.isfinite(audio).all() and audio.size > 0


@pytest.mark.parametrize("which", ["mlp0", "q1", "budget"])
def test_requantize_rebuilds_mixed_packages(darwin: Path, packages: dict[str, Path], which: str,
                                            tmp_path: Path) -> None:
    from test_search_state import assert_requantize_matches

    assert assert_requantize_matches(darwin, packages[which]) > 0
    if which == "q1":  # the whole package too: config (modules_to_not_convert), weights, search state
        from tts_awq.checkpoint.files import hash_tree, list_files
        from tts_awq.quantize.requantize import requantize_package

        out = requantize_package(str(darwin), packages[which] / SEARCH_STATE_NAME, tmp_path / "again")
        files = [f for f in list_files(packages[which]) if f != "provenance.json"]
        assert hash_tree(out, files) == hash_tree(packages[which], files)
        assert _prov(out)["kept_bf16"]["names"] == [Q1]


def test_keep_arguments_that_match_nothing_are_one_line_errors(darwin: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    linears = [f"talker.model.layers.{i}.mlp.down_proj" for i in range(2)]
    assert resolve_keep_bf16(["*.down_proj"], linears) == dict.fromkeys(linears, "--keep-bf16 *.down_proj")
    with pytest.raises(UserError, match="matches no decoder Linear"):
        resolve_keep_bf16(["*.layers.9.*"], linears)
    bad = tmp_path / "keep.txt"
    bad.write_text("talker.model.layers.0.mlp.down_proj\n# fine\ntalker.code_predictor\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"keep\.txt:3: 'talker.code_predictor' matches no decoder Linear"):
        resolve_keep_bf16([str(bad)], linears)
    code = quantize_talker_main([str(darwin), str(tmp_path / "out"), *CLI_FAST, "--keep-bf16", "*.layers.99.*"])
    err = capsys.readouterr().err
    assert code == EXIT_USER and err.count("error:") == 1 and "Traceback" not in err and "layers.99" in err
    assert not (tmp_path / "out").exists()
    code = quantize_talker_main([str(darwin), str(tmp_path / "out"), "--method", "rtn", "--keep-bf16-budget", "1"])
    err = capsys.readouterr().err
    assert code == EXIT_USER and "--keep-bf16-budget needs calibration" in err


def test_budget_choice_and_plan_round_trip() -> None:
    scores = [LinearScore("a", 0.3, 1.0, 60), LinearScore("b", 0.2, 1.0, 50), LinearScore("c", 0.1, 1.0, 40)]
    table = choose_within_budget(scores, 100)
    assert [(e.name, e.kept) for e in table] == [("a", True), ("b", False), ("c", True)]
    # the stop-signal score ranks an output-error underdog first: c's |EOS shift| is 5x the median, a's error 1.5x
    shifted = [LinearScore(e.name, e.score, e.mse, e.extra_bytes, eos_shift=v)
               for e, v in zip(scores, [0.01, -0.02, -0.1], strict=True)]
    rank = combined_rank(shifted)
    assert rank == pytest.approx({"a": 1.5, "b": 1.0, "c": 5.0})
    assert [(e.name, e.kept) for e in choose_within_budget(shifted, 100)] == [("c", True), ("a", True), ("b", False)]
    assert [e.kept for e in choose_within_budget(scores, 100, already={"a"})] == [False, True, True]
    plan = KeepPlan({"b": "--keep-bf16 b"}).with_budget(scores, 100, ["a", "b", "c"])
    assert plan.reasons == {"a": "budget", "b": "--keep-bf16 b", "c": "budget"}
    assert KeepPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_budget_run_resumes_after_kill_9_byte_identical(darwin: Path, packages: dict[str, Path],
                                                        tmp_path: Path) -> None:
    """The scan's choice is saved with the resume state: a killed budget run resumes to the same bytes (every
    file, search_state included) without scanning again."""
    import shutil

    from test_hardening import _kill_after_layer

    from tts_awq.checkpoint.files import hash_tree, list_files

    src = tmp_path / "src"
    shutil.copytree(darwin, src)
    argv = [str(src), str(tmp_path / "pkg"), *CLI_FAST, "--keep-bf16-budget", str(BUDGET_MB)]
    _kill_after_layer(argv, tmp_path, "pkg", layer=1)
    partial = next(tmp_path.glob(".pkg.partial-*"))
    assert (partial / ".resume" / "keep_bf16.safetensors").is_file()
    assert quantize_talker_main([*argv, "--resume"]) == 0
    # the uninterrupted run in a process like the killed one (one thread: float reductions in the same order)
    whole = tmp_path / "whole"
    run = subprocess.run([sys.executable, "-m", "tts_awq.cli", "quantize-talker", str(src), str(whole), *argv[2:]],
                         capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    files = [f for f in list_files(whole) if f != "provenance.json"]
    assert set(list_files(tmp_path / "pkg")) == {*files, "provenance.json"}
    assert hash_tree(tmp_path / "pkg", files) == hash_tree(whole, files)
    prov = _prov(tmp_path / "pkg")
    assert prov["resumed_after_layers"] == 2 and "sensitivity_scan" not in prov["timings_s"]
    assert prov["kept_bf16"] == _prov(whole)["kept_bf16"]
    assert prov["kept_bf16"]["names"] == _prov(packages["budget"])["kept_bf16"]["names"]  # same choice in-process


def test_eos_shift_first_order_estimate_matches_the_measured_change(darwin: Path) -> None:
    """Independent reference: the stop hazard re-measured through the whole stack with each Linear alone
    replaced by its RTN INT4 version, against the scan's one-backward first-order estimate."""
    from tts_awq.quantize.engine import read_layer
    from tts_awq.quantize.eos_shift import scan_eos_shift, stop_hazard
    from tts_awq.quantize.int4 import rtn
    from tts_awq.qwen_tts import VoiceClone, eos_id, generate_voice_clone, load_tts_model
    from tts_awq.testing.tiny import reference_wav

    torch.set_num_threads(1)
    tts = load_tts_model(darwin, "cpu", torch.float32)
    clip = (reference_wav(seed=2), 24000)
    texts = ["Hello there, how are you?", "Good morning to you all.", "Short one here.", "What a nice day."]
    requests = [VoiceClone(text=t, lang="english", ref_audio=clip, ref_text="Hi there.", icl=i % 2 == 1, seed=i,
                           voice="v") for i, t in enumerate(texts)]
    xs = [r.rows for r in generate_voice_clone(tts, requests, 40, capture=True)]
    eos = eos_id(tts)
    spec, store = detect_layout(darwin).decoder, TensorStore(darwin)
    group = 64
    shifts, hazard = scan_eos_shift(store, spec, xs, eos, 4, group, progress=False)
    runner = DecoderRunner(spec, "cpu")
    norm, head = runner.final_norm(store.get(spec.final_norm)), store.get(spec.head).float()
    rows = sum(int(x.shape[0]) for x in xs)

    def measured(name: str | None) -> float:
        h = xs
        for index in range(spec.num_layers):
            tensors = dict(read_layer(store, spec, index))
            if name is not None and name.startswith(f"{spec.layer_prefix}{index}."):
                key = name[len(f"{spec.layer_prefix}{index}."):] + ".weight"
                tensors[key] = rtn(tensors[key].float(), 4, group)
            h = runner.run_layer(runner.build_layer(tensors, index), h)
        with torch.no_grad():
            return float(sum(stop_hazard(x, norm, head, eos) for x in h)) / rows

    base = measured(None)
    assert hazard == pytest.approx(base, rel=1e-5) and len(shifts) == 4 * 7
    names = list(shifts)
    actual = np.array([(measured(n) - base) / base for n in names])
    estimate = np.array([shifts[n] for n in names])
    assert np.corrcoef(estimate, actual)[0, 1] > 0.95
    top = np.argsort(-np.abs(actual))[:5]
    assert (np.sign(estimate[top]) == np.sign(actual[top])).all()
    assert np.abs(estimate[top] - actual[top]).max() < 0.35 * np.abs(actual[top]).max()
