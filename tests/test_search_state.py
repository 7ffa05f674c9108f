"""search_state.safetensors: written, listed in provenance, survives resume, and rebuilds the package exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tts_awq.checkpoint import TensorStore, detect_layout
from tts_awq.checkpoint.files import sha256_file
from tts_awq.checkpoint.store import read_safetensors_header
from tts_awq.cli import _quantize_options, build_parser
from tts_awq.errors import UserError
from tts_awq.quantize.apply import apply_scales, clip_weight
from tts_awq.quantize.decoder import DecoderRunner
from tts_awq.quantize.engine import AwqOptions, LayerResult, search_layer
from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker
from tts_awq.quantize.requantize import requantize
from tts_awq.quantize.resume import ResumeState
from tts_awq.quantize.scale_groups import groups_for
from tts_awq.quantize.search_state import SEARCH_STATE_NAME, layer_state, read_search_state

FAST = {"n_samples": 6, "seq_len": 40, "device": "cpu", "progress": False, "calib_batch_size": 6}


@pytest.fixture(scope="module")
def darwin(tiny_root: dict[str, Path]) -> Path:
    return tiny_root["tiny-darwin"]


@pytest.fixture(scope="module")
def awq_package(darwin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_talker(QuantizeOptions(src=str(darwin), out=tmp_path_factory.mktemp("ss") / "awq",
                                           method="awq-gptq", **FAST))


def assert_requantize_matches(source: Path, package: Path) -> int:
    """Every layer tensor requantize rebuilds equals the package's byte for byte; returns how many."""
    store = TensorStore(package)
    spec = detect_layout(package).decoder
    compared = 0
    for result in requantize(source, package / SEARCH_STATE_NAME):
        prefix = f"{spec.layer_prefix}{result.index}."
        assert set(result.tensors) == {n[len(prefix):] for n in store.keys() if n.startswith(prefix)}
        for rel, tensor in result.tensors.items():
            stored = store.get(prefix + rel)
            assert tensor.dtype == stored.dtype and torch.equal(tensor, stored), prefix + rel
            compared += 1
    return compared


def test_search_state_file_names_metadata_and_provenance(awq_package: Path) -> None:
    state = read_search_state(awq_package / SEARCH_STATE_NAME)
    spec = detect_layout(awq_package).decoder
    assert state.metadata["group_size"] == "128" and state.metadata["bits"] == "4"
    assert state.metadata["method"] == "awq-gptq" and state.metadata["duo_scaling"] == "true"
    assert state.metadata["n_grid"] == "20" and state.metadata["format_version"] == "2"
    assert sorted(state.layers) == list(range(spec.num_layers))
    hidden, inter = spec.hidden_size, int(spec.config["intermediate_size"])
    layer3 = state.layers[3]
    # GQA: v -> o is not a scale group; q/k are never clipped
    linears = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj")
    assert set(layer3) == {"scales.input_layernorm", "scales.post_attention_layernorm", "scales.mlp.up_proj",
                           "clip.self_attn.v_proj", "clip.self_attn.o_proj", "clip.mlp.gate_proj",
                           "clip.mlp.up_proj", "clip.mlp.down_proj", *(f"codes.{n}" for n in linears)}
    # error-compensated codes, two per byte: [out, in / 2] uint8
    assert layer3["codes.mlp.down_proj"].shape == (hidden, inter // 2)
    assert layer3["codes.mlp.down_proj"].dtype == torch.uint8
    assert layer3["scales.input_layernorm"].shape == (hidden,) and layer3["scales.mlp.up_proj"].shape == (inter,)
    assert layer3["clip.mlp.down_proj"].shape == (hidden, inter // 128)
    assert all(t.dtype == torch.float32 for k, t in layer3.items() if not k.startswith("codes."))
    infos, _ = read_safetensors_header(awq_package / SEARCH_STATE_NAME)  # the full names in the file
    assert "talker.model.layers.3.scales.input_layernorm" in infos
    assert "talker.model.layers.3.clip.self_attn.o_proj" in infos
    prov = json.loads((awq_package / "provenance.json").read_text())
    assert prov["outputs_sha256"][SEARCH_STATE_NAME] == sha256_file(awq_package / SEARCH_STATE_NAME)
    entry = prov["search_state"]
    assert entry["file"] == SEARCH_STATE_NAME and entry["tensor_count"] == len(infos) == 15 * spec.num_layers
    assert entry["metadata"] == state.metadata


def test_searched_scales_are_the_ones_folded_into_the_norms(darwin: Path, awq_package: Path) -> None:
    src, pkg = TensorStore(darwin), TensorStore(awq_package)
    state = read_search_state(awq_package / SEARCH_STATE_NAME)
    for index, layer in state.layers.items():
        norm = f"talker.model.layers.{index}.input_layernorm.weight"
        expected = (src.get(norm).float() / layer["scales.input_layernorm"]).to(torch.bfloat16)
        assert torch.equal(pkg.get(norm), expected)


def test_requantize_rebuilds_the_awq_package_byte_for_byte(darwin: Path, awq_package: Path) -> None:
    assert assert_requantize_matches(darwin, awq_package) > 4 * 7 * 3


def test_rtn_and_no_clip_packages(darwin: Path, tmp_path: Path) -> None:
    rtn = quantize_talker(QuantizeOptions(src=str(darwin), out=tmp_path / "rtn", method="rtn", **FAST))
    state = read_search_state(rtn / SEARCH_STATE_NAME)
    assert state.layers == {} and state.metadata["method"] == "rtn"  # metadata only, documented
    assert json.loads((rtn / "provenance.json").read_text())["search_state"]["tensor_count"] == 0
    assert_requantize_matches(darwin, rtn)
    awq = quantize_talker(QuantizeOptions(src=str(darwin), out=tmp_path / "awq", **FAST))  # the default: awq
    state = read_search_state(awq / SEARCH_STATE_NAME)  # AWQ alone: round-to-nearest, no codes saved
    assert state.metadata["method"] == "awq" and state.layers
    assert all(not k.startswith("codes.") for layer in state.layers.values() for k in layer)
    assert_requantize_matches(darwin, awq)
    no_clip = quantize_talker(QuantizeOptions(src=str(darwin), out=tmp_path / "nc", clip=False,
                                              **{**FAST, "n_samples": 2, "seq_len": 24}))
    state = read_search_state(no_clip / SEARCH_STATE_NAME)
    assert all(not k.startswith("clip.") for layer in state.layers.values() for k in layer)
    assert_requantize_matches(darwin, no_clip)


def test_requantize_refuses_a_foreign_state(darwin: Path, awq_package: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        next(requantize(darwin, tmp_path / "nope.safetensors"))
    with pytest.raises(UserError, match="not a tts-awq search_state"):
        next(requantize(darwin, awq_package / "model.safetensors"))


def test_apply_scales_keeps_the_layer_function(darwin: Path) -> None:
    """Folding any positive scales into norm/Linear pairs leaves the layer's float output unchanged."""
    store = TensorStore(darwin)
    spec = detect_layout(darwin).decoder
    runner = DecoderRunner(spec)
    tensors = {k: v.float() for k, v in store.get_prefix(f"{spec.layer_prefix}1.").items()}
    xs = [torch.randn(n, spec.hidden_size, generator=torch.Generator().manual_seed(n)) for n in (9, 14)]
    reference = runner.run_layer(runner.build_layer(dict(tensors), 1), xs)
    layer = runner.build_layer(dict(tensors), 1)
    g = torch.Generator().manual_seed(0)
    searched = [(group, torch.rand(layer.get_submodule(group.linears[0]).in_features, generator=g) * 3 + 0.1)
                for group in groups_for(layer)]
    apply_scales(layer, searched)
    for a, b in zip(reference, runner.run_layer(layer, xs), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    for name, tensor in tensors.items():  # rebinding only: the caller's tensors are intact
        assert torch.equal(tensor, store.get(f"{spec.layer_prefix}1.{name}").float()), name


def test_clip_weight_accepts_both_shapes() -> None:
    w = torch.randn(8, 256)
    bound = torch.rand(8, 2) * 0.5
    assert torch.equal(clip_weight(w, bound), clip_weight(w, bound[..., None]))
    assert (clip_weight(w, bound).abs().reshape(8, 2, 128) <= bound[..., None]).all()


def test_search_layer_state_and_resume_round_trip(darwin: Path, tmp_path: Path) -> None:
    store = TensorStore(darwin)
    spec = detect_layout(darwin).decoder
    runner = DecoderRunner(spec)
    tensors = {k: v.float() for k, v in store.get_prefix(f"{spec.layer_prefix}0.").items()}
    xs = [torch.randn(n, spec.hidden_size, generator=torch.Generator().manual_seed(n)) for n in (30, 21)]
    done = search_layer(runner, runner.build_layer(tensors, 0), xs, AwqOptions())
    assert set(done.scales) == {g.prev for g in groups_for(runner.build_layer(tensors, 0))}
    state = layer_state(done.scales, done.clips)
    assert set(state) == {f"scales.{p}" for p in done.scales} | {f"clip.{n}" for n in done.clips}
    assert all(torch.equal(done.state[k], v) for k, v in state.items())
    resume = ResumeState(tmp_path, "k")
    resume.layers.mkdir(parents=True)
    resume.save_layer(LayerResult(index=0, tensors={"w": torch.ones(2)}, stats={"a": 1}, state=done.state), xs)
    back = resume.load_layer(0)
    assert set(back.state) == set(done.state)
    assert all(torch.equal(back.state[k], done.state[k]) for k in done.state)
    assert back.stats == {"a": 1} and torch.equal(back.tensors["w"], torch.ones(2))
    (tmp_path / ".resume" / "layers" / "000.safetensors").unlink()  # a partial run of an older version
    with pytest.raises(UserError, match="remove"):
        resume.load_layer(0)


def test_quantize_cli_defaults_come_from_the_options() -> None:
    args = build_parser("quantize-talker").parse_args(["a", "b"])
    assert _quantize_options(args) == QuantizeOptions(src="a", out=Path("b"))
    args = build_parser().parse_args(["quantize-talker", "a", "b", "--keep-bf16", "x.txt", "*.layers.0.*",
                                      "--keep-bf16-budget", "12.5", "--keep-bf16", "y"])
    options = _quantize_options(args)
    assert options.keep_bf16 == ("x.txt", "*.layers.0.*", "y") and options.keep_bf16_budget_mb == 12.5
    assert _quantize_options(build_parser("quantize-talker").parse_args(["a", "b"])).keep_bf16 == ()


def test_requantize_cli_rebuilds_the_whole_package(darwin: Path, awq_package: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tts_awq.checkpoint.files import hash_tree, list_files
    from tts_awq.cli import main

    out = tmp_path / "again"
    assert main(["requantize", str(darwin), str(awq_package / SEARCH_STATE_NAME), str(out)]) == 0
    files = [f for f in list_files(awq_package) if f != "provenance.json"]
    assert set(list_files(out)) == {*files, "provenance.json"}
    assert hash_tree(out, files) == hash_tree(awq_package, files)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stage"] == "quantize-talker" and prov["requantized_from"]["sha256"] == sha256_file(
        awq_package / SEARCH_STATE_NAME)
    assert prov["outputs_sha256"] == hash_tree(out, files)
    capsys.readouterr()
    assert main(["requantize", str(darwin), str(awq_package / "config.json"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
