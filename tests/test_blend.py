"""Darwin-style FFN blend on the tiny TTS + tiny Qwen3 LM: exact at the ends, streaming, checked, traceable."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tts_awq.checkpoint import TensorStore, list_files, sha256_file
from tts_awq.checkpoint.files import hash_tree
from tts_awq.errors import UserError
from tts_awq.testing.tiny import DECODER, reference_wav
from tts_awq.upstream.blend import LLM_FFN, TTS_FFN, blend_ffn, blend_sweep, ffn_pairs

N_FFN = DECODER["num_hidden_layers"] * 3
NOT_COPIED = {"model.safetensors", "provenance.json"}


@pytest.fixture(scope="module")
def tts(tiny_root: dict[str, Path]) -> Path:
    return tiny_root["tiny-tts-base"]


@pytest.fixture(scope="module")
def llm(tiny_root: dict[str, Path]) -> Path:
    return tiny_root["tiny-qwen3-lm"]


@pytest.fixture(scope="module")
def sweep(tts: Path, llm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    alphas = [0.0, 0.5, 1.0]
    paths = blend_sweep(tts, llm, alphas, tmp_path_factory.mktemp("sweep"))
    return dict(zip(alphas, paths, strict=True))


def _bits(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


def test_sweep_writes_one_dir_per_alpha(sweep: dict[float, Path]) -> None:
    assert [p.name for p in sweep.values()] == ["alpha-0", "alpha-0.5", "alpha-1"]
    for alpha, path in sweep.items():
        params = json.loads((path / "provenance.json").read_text())["parameters"]
        assert params["alpha"] == alpha
        assert params["tensors_changed"] == (0 if alpha == 0.0 else N_FFN)


def test_alpha_0_reproduces_tts_bit_for_bit(sweep: dict[float, Path], tts: Path) -> None:
    src, out = TensorStore(tts), TensorStore(sweep[0.0])
    assert out.keys() == src.keys()
    for name in src.keys():
        assert out.info(name).dtype == src.info(name).dtype and out.info(name).shape == src.info(name).shape
        assert _bits(out.get(name)) == _bits(src.get(name)), name
    assert out.metadata["model.safetensors"] == src.metadata["model.safetensors"]


def test_alpha_1_gives_llm_ffn_and_keeps_the_rest(sweep: dict[float, Path], tts: Path, llm: Path) -> None:
    src, lm, out = TensorStore(tts), TensorStore(llm), TensorStore(sweep[1.0])
    pairs = dict(ffn_pairs(DECODER["num_hidden_layers"]))
    assert len(pairs) == N_FFN
    for name in src.keys():
        if name in pairs:
            expected = lm.get(pairs[name]).to(src.info(name).torch_dtype)
            assert _bits(out.get(name)) == _bits(expected), name
            assert not torch.equal(out.get(name), src.get(name))
        else:
            assert _bits(out.get(name)) == _bits(src.get(name)), name


def test_alpha_half_is_the_float32_lerp(sweep: dict[float, Path], tts: Path, llm: Path) -> None:
    name = TTS_FFN.format(layer=2, proj="down_proj")
    w_tts = TensorStore(tts).get(name)
    w_llm = TensorStore(llm).get(LLM_FFN.format(layer=2, proj="down_proj"))
    expected = (0.5 * w_tts.float() + 0.5 * w_llm.float()).to(torch.bfloat16)
    got = TensorStore(sweep[0.5]).get(name)
    assert got.dtype == torch.bfloat16
    assert _bits(got) == _bits(expected)


def test_darwin_changes_only_ffn_and_copies_files(tiny_root: dict[str, Path], tts: Path) -> None:
    darwin = tiny_root["tiny-darwin"]
    src, out = TensorStore(tts), TensorStore(darwin)
    pairs = dict(ffn_pairs(DECODER["num_hidden_layers"]))
    for name in src.keys():
        same = _bits(out.get(name)) == _bits(src.get(name))
        assert same != (name in pairs), name
    files = [rel for rel in list_files(tts) if rel not in NOT_COPIED]
    assert [rel for rel in list_files(darwin) if rel not in NOT_COPIED] == files
    assert "speech_tokenizer/model.safetensors" in files
    for rel in files:
        assert (darwin / rel).read_bytes() == (tts / rel).read_bytes(), rel


def test_provenance_lists_both_parents(tiny_root: dict[str, Path], tts: Path, llm: Path) -> None:
    darwin = tiny_root["tiny-darwin"]
    record = json.loads((darwin / "provenance.json").read_text())
    assert record["stage"] == "blend"
    params = record["parameters"]
    assert params["alpha"] == 0.03 and params["tensors_changed"] == N_FFN and len(params["changed"]) == N_FFN
    roles = {entry["role"]: entry for entry in record["inputs"]}
    assert set(roles) == {"tts", "llm"}
    assert roles["tts"]["files_sha256"]["model.safetensors"] == sha256_file(tts / "model.safetensors")
    assert roles["llm"]["files_sha256"]["model.safetensors"] == sha256_file(llm / "model.safetensors")
    assert roles["tts"]["provenance"]["stage"] == "tiny-tts"
    assert roles["llm"]["provenance"]["stage"] == "tiny-qwen3-lm"
    assert record["outputs_sha256"]["model.safetensors"] == sha256_file(darwin / "model.safetensors")


def test_blend_output_synthesizes(tiny_root: dict[str, Path], qwen_tts: types.SimpleNamespace) -> None:
    model = qwen_tts.Qwen3TTSModel.from_pretrained(
        str(tiny_root["tiny-darwin"]), dtype=torch.float32, device_map="cpu", attn_implementation="sdpa"
    )
    torch.manual_seed(0)
    wavs, sr = model.generate_voice_clone(
        text="Hello world.", language="English", ref_audio=(reference_wav(), 24000),
        x_vector_only_mode=True, max_new_tokens=16,
    )  # fmt: skip
    assert sr == 24000 and wavs[0].size > 0 and wavs[0].size % 1920 == 0
    assert np.isfinite(wavs[0]).all()


def _llama_like(llm: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "llama"
    shutil.copytree(llm, bad)
    config = json.loads((bad / "config.json").read_text())
    config.update(
        model_type="llama", architectures=["LlamaForCausalLM"], intermediate_size=512, num_hidden_layers=2
    )
    (bad / "config.json").write_text(json.dumps(config))
    return bad


def test_llama_llm_lists_every_mismatch(tts: Path, llm: Path, tmp_path: Path) -> None:
    bad = _llama_like(llm, tmp_path)
    with pytest.raises(UserError) as info:
        blend_ffn(tts, bad, 0.03, tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message
    for expected in (
        "model_type",
        "'llama'",
        "intermediate_size: tts 384 != llm 512",
        "num_hidden_layers: tts 4 != llm 2",
    ):
        assert expected in message
    assert "hidden_size:" not in message  # only real mismatches are listed
    assert not (tmp_path / "out").exists()


def test_missing_source_refused(llm: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        blend_ffn(tmp_path / "nope", llm, 0.03, tmp_path / "out")


def test_swapped_arguments_refused(tts: Path, llm: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a Qwen3-TTS checkpoint"):
        blend_ffn(llm, tts, 0.03, tmp_path / "out")


def test_missing_llm_tensor_refused(tts: Path, llm: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    partial = tmp_path / "partial"
    shutil.copytree(llm, partial)
    store = TensorStore(partial)
    tensors = {k: store.get(k) for k in store.keys() if k != "model.layers.3.mlp.up_proj.weight"}
    store.close()
    save_file(tensors, str(partial / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"model\.layers\.3\.mlp\.up_proj\.weight missing"):
        blend_ffn(tts, partial, 0.03, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("alpha", [1.5, -0.01, float("nan")])
def test_alpha_out_of_range(tts: Path, llm: Path, tmp_path: Path, alpha: float) -> None:
    with pytest.raises(UserError, match=r"outside \[0, 1\]"):
        blend_ffn(tts, llm, alpha, tmp_path / "out")
    with pytest.raises(UserError, match=r"outside \[0, 1\]"):
        blend_sweep(tts, llm, [0.1, alpha], tmp_path / "sweep")
    assert not (tmp_path / "out").exists() and not (tmp_path / "sweep").exists()


def test_sources_untouched_and_existing_out(tts: Path, llm: Path, tmp_path: Path) -> None:
    before = (hash_tree(tts), hash_tree(llm))
    out = tmp_path / "out"
    blend_ffn(tts, llm, 0.25, out)
    assert (hash_tree(tts), hash_tree(llm)) == before

    first = sha256_file(out / "model.safetensors")
    with pytest.raises(UserError, match="already exists"):
        blend_ffn(tts, llm, 0.5, out)
    assert sha256_file(out / "model.safetensors") == first
    blend_ffn(tts, llm, 0.5, out, overwrite=True)
    assert sha256_file(out / "model.safetensors") != first
    assert json.loads((out / "provenance.json").read_text())["parameters"]["alpha"] == 0.5


def test_output_inside_source_refused(tts: Path, llm: Path) -> None:
    with pytest.raises(UserError, match="must not be inside"):
        blend_ffn(tts, llm, 0.03, tts / "blend")


def test_sweep_checks_everything_first(tts: Path, llm: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="repeat"):
        blend_sweep(tts, llm, [0.03, 0.030], tmp_path / "dup")
    (tmp_path / "s" / "alpha-0.5").mkdir(parents=True)
    with pytest.raises(UserError, match="already exists"):
        blend_sweep(tts, llm, [0.1, 0.5], tmp_path / "s")
    assert not (tmp_path / "s" / "alpha-0.1").exists()


def test_sharded_tts_source(tts: Path, llm: Path, tmp_path: Path) -> None:
    from tts_awq.checkpoint import ShardedWriter, copy_tree

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    copy_tree(tts, sharded, skip=lambda rel: rel in NOT_COPIED)
    src = TensorStore(tts)
    plan = {name: (info.torch_dtype, info.shape) for name, info in src.infos().items()}
    writer = ShardedWriter(sharded, plan, metadata={"format": "pt"}, max_shard_bytes=8 << 20)
    for name in src.keys():
        writer.write(name, src.get(name))
    assert len(writer.close()) > 2  # several shards + index

    out = blend_ffn(sharded, llm, 1.0, tmp_path / "out")
    blended, lm = TensorStore(out), TensorStore(llm)
    assert blended.keys() == src.keys()
    name = TTS_FFN.format(layer=1, proj="gate_proj")
    assert _bits(blended.get(name)) == _bits(lm.get(LLM_FFN.format(layer=1, proj="gate_proj")))
    other = "talker.model.layers.1.self_attn.q_proj.weight"
    assert _bits(blended.get(other)) == _bits(src.get(other))
    assert not any(rel.startswith("model-") for rel in list_files(out))


def test_readme_blend_command_forms_parse_and_run(tts: Path, llm: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`--alpha 0.03 OUT` and `--alpha 0 0.5 OUT/` (the README's forms) give OUT to OUT, not to --alpha."""
    from tts_awq.cli import main

    assert main(["blend", "--tts", str(tts), "--llm", str(llm), "--alpha", "0.03", str(tmp_path / "d3")]) == 0
    assert json.loads((tmp_path / "d3" / "provenance.json").read_text())["parameters"]["alpha"] == 0.03
    assert main(["blend", "--tts", str(tts), "--llm", str(llm), "--alpha", "0", "0.5", str(tmp_path / "sw")]) == 0
    assert sorted(p.name for p in (tmp_path / "sw").iterdir()) == ["alpha-0", "alpha-0.5"]
    capsys.readouterr()
    assert main(["blend", "--tts", str(tts), "--llm", str(llm), "--alpha", "0.03"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "OUT is missing" in err[0]
    assert main(["blend", "--tts", str(tts), "--llm", str(llm), "--alpha", "x", "0.1", str(tmp_path / "e")]) == 2
    assert "alpha 'x' is not a number" in capsys.readouterr().err
