"""tts-awq export --to compressed-tensors / gguf / mlx: every INT4 linear read back by the runtime's own library
(compressed-tensors' decompressor, gguf's reader and dequantizer, mlx.core.dequantize) equals the package's
dequantized weight; mlx-audio loads the mlx export and synthesizes on CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_push import (  # noqa: F401  (the loopback Hub and its network guard)
    FakeHub,
    card_meta,
    hub,  # noqa: F401  (the `hub` fixture)
    loopback_only,
)

from tts_awq.checkpoint import TensorStore, write_json
from tts_awq.checkpoint.files import hash_tree, sha256_file
from tts_awq.cli import main
from tts_awq.errors import EXIT_USER
from tts_awq.export.source import open_source
from tts_awq.export.stage import ExportOptions, export_package
from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker
from tts_awq.testing.side_venv import MLX_AUDIO

REPO = Path(__file__).resolve().parents[1]

FAST = {"n_samples": 4, "seq_len": 32, "device": "cpu", "progress": False, "calib_batch_size": 4, "method": "rtn"}
REPORT = {"passed": True, "failed_gates": [],
          "gates": {"teacher_top1": {"value": 0.97, "threshold": 0.9, "op": ">=", "passed": True,
                                     "metric": "teacher.top1_agreement", "help": "top-1"}},
          "metrics": {"teacher": {"top1_agreement": 0.97}}}


def mark_validated(package: Path, report: dict[str, Any] = REPORT) -> Path:
    """Give a package the validation record validate-awq writes (report + its sha256 in provenance)."""
    (package / "validation").mkdir(exist_ok=True)
    (package / "validation/report.json").write_text(json.dumps(report, indent=2))
    (package / "validation/report.md").write_text("# report\n")
    prov = json.loads((package / "provenance.json").read_text())
    prov["validation"] = {"report_sha256": sha256_file(package / "validation/report.json"),
                          "passed": report["passed"], "created_unix": 1700000100,
                          "files": hash_tree(package, ["validation/report.json", "validation/report.md"])}
    write_json(package / "provenance.json", prov)
    return package


@pytest.fixture(scope="module")
def packages(tiny_root: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-src")
    darwin = str(tiny_root["tiny-darwin"])
    int4 = quantize_talker(QuantizeOptions(src=darwin, out=root / "int4", **FAST))
    fused = quantize_talker(QuantizeOptions(src=darwin, out=root / "fused", keep_bf16=("*.layers.1.self_attn.q_proj",
                                                                                          "*.layers.2.mlp.up_proj"),
                                            keep_bf16_fused=True, **FAST))
    split = root / "split"
    assert main(["quantize-talker", darwin, str(split), "--method", "rtn", "--n-samples", "4", "--seq-len", "32",
                 "--device", "cpu", "--keep-bf16", "*.layers.0.mlp.down_proj", "*.layers.1.self_attn.k_proj"]) == 0
    return {"int4": mark_validated(int4), "fused": mark_validated(fused), "split": mark_validated(split)}


@pytest.fixture(scope="module")
def exports(packages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for fmt in ("compressed-tensors", "gguf"):
        out[fmt] = export_package(ExportOptions(package=packages["int4"], out=root / fmt, to=fmt))
    return out


def references(package: Path) -> dict[str, torch.Tensor]:
    source = open_source(package, allow_unvalidated=True)
    return {name: source.reference(name) for name in source.int4}


# --------------------------------------------------------------------------------------------------- compressed-tensors
def test_compressed_tensors_decompressor_reproduces_the_package(packages: dict[str, Path],
                                                                 exports: dict[str, Path]) -> None:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig

    out = exports["compressed-tensors"]
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(qcfg)
    assert (config.format, config.quantization_status.value) == ("pack-quantized", "compressed")
    scheme = config.config_groups["group_0"]
    assert (scheme.weights.num_bits, scheme.weights.symmetric, scheme.weights.strategy, scheme.weights.group_size) \
        == (4, False, "group", 128)
    store = TensorStore(out)
    refs = references(packages["int4"])
    assert len(refs) == 28  # every decoder linear of the tiny talker (4 layers x 7) is INT4
    for name, ref in refs.items():
        state = {k: store.get(f"{name}.{k}") for k in ("weight_packed", "weight_scale", "weight_zero_point",
                                                         "weight_shape")}
        weight = PackedQuantizationCompressor.decompress(state, scheme)["weight"]
        # compressed-tensors dequantizes in the scale dtype (float16): exactly the float16 rounding of (q - z) * s
        assert weight.dtype == torch.float16
        assert torch.equal(weight, ref.to(torch.float16)), name
    ignore = set(qcfg["ignore"])
    assert "talker.codec_head" in ignore and "talker.text_projection.linear_fc1" in ignore
    assert "talker.code_predictor.model.layers.0.self_attn.q_proj" in ignore
    assert not any(n.startswith("talker.model.layers.") for n in ignore)
    assert not any(k.endswith((".qweight", ".qzeros", ".scales")) for k in store.keys())


def test_compressed_tensors_refuses_a_split_fused_group_and_takes_a_whole_one(
        packages: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["export", str(packages["split"]), str(tmp_path / "ct"), "--to", "compressed-tensors"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER and err.count("\n") == 0 and "--keep-bf16-fused" in err
    assert "talker.model.layers.1.self_attn.k_proj+talker.model.layers.1.self_attn.q_proj" in err
    assert not (tmp_path / "ct").exists()
    out = export_package(ExportOptions(package=packages["fused"], out=tmp_path / "fused", to="compressed-tensors"))
    ignore = set(json.loads((out / "config.json").read_text())["quantization_config"]["ignore"])
    kept = {f"talker.model.layers.1.self_attn.{p}_proj" for p in "qkv"} | \
        {f"talker.model.layers.2.mlp.{p}_proj" for p in ("gate", "up")}
    assert kept <= ignore
    store = TensorStore(out)
    for name in kept:
        assert f"{name}.weight" in store and f"{name}.weight_packed" not in store


# --------------------------------------------------------------------------------------------------- gguf
def test_gguf_reader_and_dequantizer_reproduce_the_package(packages: dict[str, Path],
                                                           exports: dict[str, Path]) -> None:
    import gguf

    source = open_source(packages["int4"], allow_unvalidated=True)
    reader = gguf.GGUFReader(exports["gguf"] / "talker-q4_1.gguf")
    tensors = {t.name: t for t in reader.tensors}
    talker = source.config["talker_config"]
    worst = 0.0
    for name, ref in references(packages["int4"]).items():
        layer, rest = name[len("talker.model.layers."):].split(".", 1)
        target = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                  "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down"}[rest]
        tensor = tensors[f"blk.{layer}.{target}.weight"]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.Q4_1
        dense = torch.from_numpy(np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
        weights = source.weights(name)
        # d = s exactly; m = -s*z rounded to float16: |dw| <= half a float16 step of s*z, nothing more
        exact_m = (weights.scales.float() * weights.zeros.float()).repeat_interleave(128, dim=1)
        half_step = torch.exp2(torch.floor(torch.log2(exact_m.clamp_min(2.0**-14))) - 11)
        assert bool(((dense - ref).abs() <= half_step).all()), name
        worst = max(worst, float((dense - ref).abs().max()))
    assert 0 < worst < 1e-3
    fields = reader.fields

    def value(key: str) -> Any:
        field = fields[key]
        return field.contents() if hasattr(field, "contents") else field.parts[field.data[0]].tolist()

    assert value("general.architecture") == "qwen3tts"
    assert value("qwen3tts.block_count") == 4
    assert value("qwen3tts.embedding_length") == 128 and value("qwen3tts.attention.head_count_kv") == 2
    assert value("qwen3tts.rope.dimension_sections") == [6, 5, 5, 0]
    vocab = talker["text_vocab_size"] + talker["vocab_size"]
    assert len(value("tokenizer.ggml.tokens")) == vocab
    assert value("tokenizer.ggml.eos_token_id") == talker["text_vocab_size"] + talker["codec_eos_token_id"]
    assert len(value("tokenizer.ggml.suppress_tokens")) == 1023
    assert list(tensors["token_embd.weight"].shape) == [128, vocab]
    assert list(tensors["output.weight"].shape) == [128, talker["vocab_size"]]
    assert {"output_norm.weight", "blk.3.attn_q_norm.weight", "blk.0.ffn_norm.weight"} <= set(tensors)


def test_gguf_mixed_package_keeps_dense_linears_dense(packages: dict[str, Path], tmp_path: Path) -> None:
    import gguf

    out = export_package(ExportOptions(package=packages["split"], out=tmp_path / "gguf", to="gguf"))
    tensors = {t.name: t for t in gguf.GGUFReader(out / "talker-q4_1.gguf").tensors}
    assert tensors["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.BF16
    assert tensors["blk.1.attn_k.weight"].tensor_type == gguf.GGMLQuantizationType.BF16
    assert tensors["blk.1.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_1
    store = TensorStore(packages["split"])
    dense = gguf.quants.dequantize(tensors["blk.0.ffn_down.weight"].data, gguf.GGMLQuantizationType.BF16)
    assert torch.equal(torch.from_numpy(np.array(dense, dtype=np.float32)),
                       store.get("talker.model.layers.0.mlp.down_proj.weight").float())


# --------------------------------------------------------------------------------------------------- mlx
#: Teacher-forced first-codebook logits, mlx-audio vs tts_awq.load_quantized on the same 24 input rows. Both run the
#: same INT4 weights exactly (mlx: scale*q + bias = s*(q - z) in float32; ours: kernel="dequant", float32 end to
#: end) and the same BF16 dense weights in float32, so they differ only by float32 summation order and kernels
#: (mlx's quantized matmul, RMSNorm, attention vs torch's): measured 2.4e-6 relative L2. The bound 1e-4 leaves ~40x
#: margin; a layout or dequantization mistake (a transposed or mis-signed tensor, a shifted nibble) moves logits by
#: O(1). (Our default CPU kernel, int4mm, computes in bfloat16 and differs from both by ~1e-2.)
LOGITS_REL_TOL = 1e-4
MLX_KEPT = "talker.model.layers.0.mlp.down_proj"


@pytest.fixture(scope="module")
def mlx_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    python, why = MLX_AUDIO.ensure()
    if python is None:
        pytest.skip(f"the mlx-audio venv could not be built: {why}")
    from tts_awq.loading import load_quantized
    from tts_awq.qwen_tts.forward import codec_logits, talker_hidden
    from tts_awq.testing.presets import TINY_MLX
    from tts_awq.testing.tiny import build_tts

    root = tmp_path_factory.mktemp("mlx")
    src = build_tts(root / "tts", seed=0, preset=TINY_MLX)
    # a mixed package: one decoder linear kept dense (mlx-audio must load it as a plain Linear)
    package = mark_validated(quantize_talker(QuantizeOptions(src=str(src), out=root / "pkg",
                                                             keep_bf16=(MLX_KEPT,), **FAST)))
    out = export_package(ExportOptions(package=package, out=root / "mlx", to="mlx"))
    source = open_source(package, allow_unvalidated=True)
    ids = torch.randint(0, 2048, (24,), generator=torch.Generator().manual_seed(0))
    rows = source.store.get("talker.model.codec_embedding.weight")[ids].float()
    tts = load_quantized(package, device="cpu", dtype="float32", kernel="dequant")  # float32 end to end
    ours = codec_logits(tts, talker_hidden(tts, rows)).float().numpy()
    work = root / "work"
    work.mkdir()
    refs = {f"ref.{name}": source.reference(name).numpy() for name in source.int4}
    np.savez(work / "inputs.npz", rows=rows.numpy(), seed=1, text="Hello world. This is a test.", max_tokens=12,
             **refs)
    proc = subprocess.run([str(python), str(REPO / "scripts/mlx_audio_check.py"), str(out), str(work)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"result": json.loads((work / "result.json").read_text()), "ours": ours,
            "theirs": np.load(work / "mlx_logits.npy"), "source": source, "out": out}


def test_mlx_core_dequantize_reproduces_the_package_exactly(mlx_case: dict[str, Any]) -> None:
    result, source = mlx_case["result"], mlx_case["source"]
    assert result["group_sizes"] == [128] and result["bits"] == [4]
    assert sorted(result["dequantize_max_abs_dw"]) == sorted(source.int4)
    assert all(dw == 0.0 for dw in result["dequantize_max_abs_dw"].values()), result["dequantize_max_abs_dw"]
    # only the talker's decoder linears are quantized: the code predictor stays dense as in the package
    assert all(name.startswith("talker.model.layers.") for name in result["quantized_modules"])
    assert len(result["quantized_modules"]) == 27 and result["dense_talker_linears"] == [MLX_KEPT]


def test_mlx_audio_teacher_forced_logits_match_our_loader(mlx_case: dict[str, Any]) -> None:
    ours, theirs = mlx_case["ours"], mlx_case["theirs"]
    assert theirs.shape == ours.shape
    rel = float(np.linalg.norm(theirs - ours) / np.linalg.norm(ours))
    assert rel <= LOGITS_REL_TOL, rel
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() == 1.0


def test_mlx_audio_generates_codec_frames_and_audio_on_cpu(mlx_case: dict[str, Any]) -> None:
    result = mlx_case["result"]
    frames, samples = sum(result["frames"]), sum(result["samples"])
    assert frames >= 2
    assert samples == frames * 1920 and result["sample_rate"] == 24000
    assert result["audio_finite"] and min(result["audio_rms"]) > 1e-4


def test_mlx_export_refuses_shapes_mlx_audio_would_misread(packages: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["export", str(packages["int4"]), str(tmp_path / "mlx"), "--to", "mlx"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER and err.count("\n") == 0 and "speaker_encoder.asp.conv.weight" in err
    assert not (tmp_path / "mlx").exists()


# --------------------------------------------------------------------------------------------------- stage rules
def test_refuses_unvalidated_and_failed_packages_unless_allowed(packages: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    pkg = tmp_path / "pkg"
    shutil.copytree(packages["int4"], pkg)
    mark_validated(pkg, {**REPORT, "passed": False, "failed_gates": ["teacher_top1"]})
    code = main(["export", str(pkg), str(tmp_path / "out"), "--to", "gguf"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER and err.count("\n") == 0 and "validation failed (gates: teacher_top1)" in err
    assert "--allow-unvalidated" in err and not (tmp_path / "out").exists()
    assert main(["export", str(pkg), str(tmp_path / "out"), "--to", "gguf", "--allow-unvalidated"]) == 0
    prov = json.loads((tmp_path / "out/provenance.json").read_text())
    assert prov["parent_validation"]["validated"] is False
    assert prov["parent_validation"]["problem"] == "validation failed (gates: teacher_top1)"


def test_provenance_names_the_parent_and_its_validation(packages: dict[str, Path], exports: dict[str, Path]) -> None:
    prov = json.loads((exports["compressed-tensors"] / "provenance.json").read_text())
    parent = packages["int4"]
    assert prov["stage"] == "export" and prov["parameters"]["to"] == "compressed-tensors"
    assert prov["export"]["parent_provenance_sha256"] == sha256_file(parent / "provenance.json")
    source = prov["inputs"][0]
    assert source["role"] == "source" and source["path"] == str(parent)
    assert source["files_sha256"]["model.safetensors"] == sha256_file(parent / "model.safetensors")
    assert source["provenance"]["stage"] == "quantize-talker"
    assert prov["export"]["check"] == {"linears": 28, "max_abs_dw": 0.0, "max_bound": 0.0, "exact": True,
                                       "rule": "exact: the same integers and float16 scales"}
    assert prov["validation"]["passed"] is True
    assert prov["validation"]["report_sha256"] == sha256_file(parent / "validation/report.json")
    assert prov["parent_validation"]["record"]["report_sha256"] == prov["validation"]["report_sha256"]
    assert set(prov["outputs_sha256"]) >= {"model.safetensors", "config.json", "validation/report.json"}
    assert "search_state.safetensors" not in prov["outputs_sha256"]


def test_a_failing_self_check_writes_nothing(packages: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from tts_awq.export import source as source_module

    real = source_module.ExportSource.reference

    def off_by_one_step(self: Any, name: str) -> torch.Tensor:
        weight = real(self, name)
        weight[0, 0] += 1e-3
        return weight

    monkeypatch.setattr(source_module.ExportSource, "reference", off_by_one_step)
    code = main(["export", str(packages["int4"]), str(tmp_path / "out"), "--to", "compressed-tensors"])
    err = capsys.readouterr().err
    assert code == 3 and "differs from the package's dequantized weight" in err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------- push
@pytest.mark.parametrize("fmt, library", [("compressed-tensors", "vllm"), ("gguf", "llama.cpp")])
def test_push_publishes_an_export_with_its_runtime_card(exports: dict[str, Path], packages: dict[str, Path],
                                                        hub: FakeHub, tmp_path: Path, fmt: str, library: str) -> None:  # noqa: F811
    out = exports[fmt]
    before = hash_tree(out)
    assert main(["push", str(out), "--repo-id", f"you/tiny-{fmt}", "--endpoint", hub.url,
                 "--base-model", "Qwen/Qwen3-TTS-12Hz-1.7B-Base"]) == 0
    commit = hub.commits[-1]
    landed = commit["files"]
    assert set(landed) == set(before) | {"README.md", ".gitattributes"}
    card = landed["README.md"].decode()
    meta = card_meta(card, tmp_path)
    assert meta["library_name"] == library and meta["pipeline_tag"] == "text-to-speech"
    assert meta["base_model"] == "Qwen/Qwen3-TTS-12Hz-1.7B-Base" and meta["base_model_relation"] == "quantized"
    assert fmt in meta["tags"] and "unvalidated" not in meta["tags"]
    assert "## Quality (of the parent package)" in card and "`teacher_top1`" in card and "**passed**" in card
    assert f"tts-awq export --to {fmt}" in card and "max |Δw|" in card
    assert f"you/tiny-{fmt}" in card.split("## How to run", 1)[1] or fmt == "gguf"
    assert f"{fmt} export" in commit["header"]["summary"]
    assert hash_tree(out) == before
