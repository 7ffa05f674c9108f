"""Non-finite values and edited packages never pass silently: one line, exit 2, sources untouched, no OUT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import tts_awq
from tts_awq.checkpoint.files import hash_tree
from tts_awq.cli import main, quantize_talker_main
from tts_awq.errors import UserError
from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker

FAST = {"n_samples": 2, "seq_len": 24, "device": "cpu", "progress": False, "calib_batch_size": 2}
LAYER_TENSOR = "talker.model.layers.1.mlp.up_proj.weight"


def _poison(root: Path, name: str, value: float = float("nan"), file: str = "model.safetensors") -> None:
    tensors = load_file(str(root / file))
    tensor = tensors[name].clone()
    tensor.view(-1)[3] = value
    tensors[name] = tensor
    save_file(tensors, str(root / file), metadata={"format": "pt"})


def _one_line_exit_2(code: int, capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


@pytest.fixture()
def darwin(tiny_root: dict[str, Path], tmp_path: Path) -> Path:
    path = tmp_path / "src"
    shutil.copytree(tiny_root["tiny-darwin"], path)
    return path


@pytest.mark.parametrize("method", ["awq", "rtn"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_quantize_refuses_a_non_finite_source_tensor(darwin: Path, tmp_path: Path, method: str, value: float,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _poison(darwin, LAYER_TENSOR, value)
    before = hash_tree(darwin)
    out = tmp_path / "out"
    code = quantize_talker_main([str(darwin), str(out), "--method", method, "--n-samples", "2", "--seq-len", "24"])
    _one_line_exit_2(code, capsys, LAYER_TENSOR, "model.safetensors", "non-finite")
    assert hash_tree(darwin) == before and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_quantize_refuses_a_non_finite_embedding_before_calibration(darwin: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _poison(darwin, "talker.model.text_embedding.weight")
    code = quantize_talker_main([str(darwin), str(tmp_path / "out"), "--n-samples", "2", "--seq-len", "24"])
    _one_line_exit_2(code, capsys, "talker.model.text_embedding.weight")


def test_blend_refuses_a_non_finite_llm_ffn(tiny_root: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    llm = tmp_path / "llm"
    shutil.copytree(tiny_root["tiny-qwen3-lm"], llm)
    _poison(llm, "model.layers.0.mlp.down_proj.weight", float("-inf"))
    code = main(["blend", "--tts", str(tiny_root["tiny-tts-base"]), "--llm", str(llm), "--alpha", "0.03",
                 str(tmp_path / "out")])
    _one_line_exit_2(code, capsys, "model.layers.0.mlp.down_proj.weight")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("alpha", ["nan", "inf"])
def test_blend_refuses_a_non_finite_alpha(tiny_root: dict[str, Path], tmp_path: Path, alpha: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["blend", "--tts", str(tiny_root["tiny-tts-base"]), "--llm", str(tiny_root["tiny-qwen3-lm"]),
                 "--alpha", alpha, str(tmp_path / "out")])
    _one_line_exit_2(code, capsys, "alpha")


def test_merge_refuses_non_finite_weights_and_tensors(tiny_root: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    base = tiny_root["tiny-tts-base"]
    code = main(["merge", "--base", str(base), "--model", f"{tiny_root['tiny-darwin']}:nan", str(tmp_path / "m1")])
    _one_line_exit_2(code, capsys, "not finite")
    model = tmp_path / "ft"
    shutil.copytree(tiny_root["tiny-darwin"], model)
    _poison(model, LAYER_TENSOR)
    code = main(["merge", "--base", str(base), "--model", f"{model}:0.5", str(tmp_path / "m2")])
    _one_line_exit_2(code, capsys, LAYER_TENSOR, "non-finite")
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()


@pytest.fixture(scope="module")
def package(tiny_root: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nf") / "pkg"
    return quantize_talker(QuantizeOptions(src=str(tiny_root["tiny-darwin"]), out=out, method="rtn", **FAST))


def test_load_refuses_non_finite_scales(package: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(package, bad)
    _poison(bad, "talker.model.layers.2.self_attn.o_proj.scales", float("inf"))
    with pytest.raises(UserError, match=r"layers\.2\.self_attn\.o_proj\.scales holds 1 non-finite"):
        tts_awq.load_quantized(bad)


@pytest.mark.parametrize("group_size", [64, 32, 100, "128", 0])
def test_load_refuses_an_edited_group_size_in_one_line(package: Path, tmp_path: Path, group_size: object) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(package, bad)
    config = json.loads((bad / "config.json").read_text())
    config["quantization_config"]["group_size"] = group_size
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError) as info:
        tts_awq.load_quantized(bad)
    assert "group_size" in str(info.value) and "\n" not in str(info.value)


def test_load_refuses_a_swapped_tensor_shape(package: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(package, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    name = "talker.model.layers.0.mlp.gate_proj.qzeros"
    tensors[name] = torch.zeros(tensors[name].shape[0] * 2, tensors[name].shape[1] // 2, dtype=torch.int32)
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match="gate_proj.qzeros is I32"):
        tts_awq.load_quantized(bad)
