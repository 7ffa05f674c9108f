"""Tiny random checkpoints: real qwen-tts classes, real layout and special ids, deterministic, AWQ-salient."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tts_awq.checkpoint import TensorStore, detect_layout, sha256_file
from tts_awq.tiny import (
    CODEC_IDS,
    CODEC_LANGUAGE_ID,
    DECODER,
    SAMPLES_PER_FRAME,
    TEXT_FIRST_SPECIAL_ID,
    TEXT_SPECIALS,
    TINY_TRANSFORMERS_VERSION,
    build_tiny_darwin,
    build_tiny_qwen3_lm,
    build_tiny_tts,
    reference_wav,
    salient_channels,
)

REAL_LAYOUT = [
    "config.json",
    "generation_config.json",
    "merges.txt",
    "model.safetensors",
    "preprocessor_config.json",
    "speech_tokenizer/config.json",
    "speech_tokenizer/configuration.json",
    "speech_tokenizer/model.safetensors",
    "speech_tokenizer/preprocessor_config.json",
    "tokenizer_config.json",
    "vocab.json",
]


@pytest.fixture(scope="module")
def tts_dir(tiny_root: dict[str, Path]) -> Path:
    return tiny_root["tiny-tts-base"]


@pytest.fixture(scope="module")
def tts_model(tts_dir: Path, qwen_tts: types.SimpleNamespace) -> Any:
    return qwen_tts.Qwen3TTSModel.from_pretrained(
        str(tts_dir), dtype=torch.float32, device_map="cpu", attn_implementation="sdpa"
    )


def test_layout_and_configs(tts_dir: Path) -> None:
    present = sorted(p.relative_to(tts_dir).as_posix() for p in tts_dir.rglob("*") if p.is_file())
    assert set(REAL_LAYOUT) <= set(present)
    assert "tokenizer.json" not in present  # the real repos ship vocab.json + merges.txt only

    config = json.loads((tts_dir / "config.json").read_text())
    assert config["model_type"] == "qwen3_tts" and config["tts_model_type"] == "base"
    assert config["transformers_version"] == TINY_TRANSFORMERS_VERSION
    assert "model_type" not in config["speaker_encoder_config"]  # save_pretrained's "" would crash the reload
    talker = config["talker_config"]
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
    ):
        assert talker[key] == DECODER[key]
    assert talker["hidden_size"] % 128 == 0 and talker["intermediate_size"] % 128 == 0  # AWQ group size 128
    assert sum(talker["rope_scaling"]["mrope_section"]) == talker["head_dim"] // 2
    assert {k: talker[k] for k in CODEC_IDS} == CODEC_IDS
    assert talker["codec_language_id"] == CODEC_LANGUAGE_ID and talker["spk_id"] == {}
    assert talker["vocab_size"] == 3072 and talker["text_vocab_size"] == 151936
    assert talker["code_predictor_config"]["hidden_size"] != talker["hidden_size"]
    assert config["speaker_encoder_config"]["enc_dim"] == talker["hidden_size"]

    generation = json.loads((tts_dir / "generation_config.json").read_text())
    assert generation["max_new_tokens"] == 64 and generation["top_k"] == 50

    layout = detect_layout(tts_dir)
    assert layout.kind == "qwen3_tts" and layout.has_codec and layout.decoder.num_layers == 4

    store = TensorStore(tts_dir)
    assert {store.info(name).dtype for name in store.keys()} == {"BF16"}
    assert "talker.code_predictor.small_to_mtp_projection.weight" in store
    assert store.info("talker.model.text_embedding.weight").shape == (151936, 64)
    assert store.info("talker.model.layers.0.mlp.down_proj.weight").shape == (128, 384)


def test_tokenizer_specials_and_regex(tts_model: Any) -> None:
    tokenizer = tts_model.processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids([content for content, _ in TEXT_SPECIALS])
    assert ids == list(range(TEXT_FIRST_SPECIAL_ID, TEXT_FIRST_SPECIAL_ID + len(TEXT_SPECIALS)))
    assert tokenizer.convert_tokens_to_ids(["<tts_pad>", "<tts_text_bos>", "<tts_text_eod>"]) == [
        151671,
        151672,
        151673,
    ]
    assert len(tokenizer("<|im_start|>assistant\n").input_ids) == 3
    assert len(tokenizer("<|im_end|>\n<|im_start|>assistant\n").input_ids) == 5
    # fix_mistral_regex=True must not have swapped the Qwen pre-tokenizer regex (transformers_version trap)
    assert "(?i:'s|'t|'re|'ve|'m|'ll|'d)" in repr(tokenizer.backend_tokenizer.pre_tokenizer)


def test_rope_buffers_are_initialised(tts_model: Any) -> None:
    talker = tts_model.model.talker
    for rotary, head_dim in (
        (talker.model.rotary_emb, DECODER["head_dim"]),
        (talker.code_predictor.model.rotary_emb, 16),
    ):
        expected = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        torch.testing.assert_close(rotary.inv_freq.float().cpu(), expected)


def _check_audio(wavs: list[np.ndarray], sr: int) -> np.ndarray:
    assert sr == 24000 and len(wavs) == 1
    wav = np.asarray(wavs[0])
    assert wav.ndim == 1 and wav.size > 0
    assert np.isfinite(wav).all()
    assert 1e-3 < float(wav.std()) and float(np.abs(wav).max()) <= 1.0  # the codec decodes to audible noise
    return wav


def test_voice_clone_x_vector(tts_model: Any) -> None:
    torch.manual_seed(0)
    wavs, sr = tts_model.generate_voice_clone(
        text="Hello. This is a test.", language="English", ref_audio=(reference_wav(), 24000),
        x_vector_only_mode=True, max_new_tokens=24,
    )  # fmt: skip
    wav = _check_audio(wavs, sr)
    assert wav.size % SAMPLES_PER_FRAME == 0
    assert 2 * SAMPLES_PER_FRAME <= wav.size <= 24 * SAMPLES_PER_FRAME


def test_voice_clone_icl(tts_model: Any) -> None:
    torch.manual_seed(1)
    wavs, sr = tts_model.generate_voice_clone(
        text="Good morning.", language="English", ref_audio=(reference_wav(seed=3), 24000),
        ref_text="Hello world, this is the reference audio.", max_new_tokens=24,
    )  # fmt: skip
    wav = _check_audio(wavs, sr)
    assert wav.size <= 24 * SAMPLES_PER_FRAME + 1


def test_salient_channels_planted(tts_dir: Path) -> None:
    store = TensorStore(tts_dir)
    channels = salient_channels(0)
    assert len(channels) == 3
    others = [c for c in range(DECODER["hidden_size"]) if c not in channels]
    for layer in range(DECODER["num_hidden_layers"]):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            weight = store.get(f"talker.model.layers.{layer}.{norm}.weight").float()
            assert (weight[channels] >= 7.9).all() and (weight[channels] <= 12.1).all()
            assert torch.equal(weight[others], torch.ones(len(others)))
        for name in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj"):
            weight = store.get(f"talker.model.layers.{layer}.{name}.weight").float()
            assert float(weight.abs().max()) > 5 * float(weight.std())  # heavy tail
    provenance = json.loads((tts_dir / "provenance.json").read_text())
    assert provenance["parameters"]["salience"]["channels"] == channels


def test_build_is_deterministic(tts_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_tts(tmp_path / "again", seed=0)
    assert sha256_file(again / "model.safetensors") == sha256_file(tts_dir / "model.safetensors")
    for rel in ("speech_tokenizer/model.safetensors", "config.json", "vocab.json", "tokenizer_config.json"):
        assert sha256_file(again / rel) == sha256_file(tts_dir / rel), rel


def test_tiny_lm_matches_talker_shapes(tiny_root: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm_dir = tiny_root["tiny-qwen3-lm"]
    lm, tts = TensorStore(lm_dir), TensorStore(tiny_root["tiny-tts-base"])
    layer_keys = [k for k in lm.keys() if k.startswith("model.layers.")]
    assert len(layer_keys) == DECODER["num_hidden_layers"] * 11
    for key in layer_keys:
        assert lm.info(key).shape == tts.info("talker." + key).shape, key
        assert lm.info(key).dtype == "BF16"
    config = json.loads((lm_dir / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["vocab_size"] == 1024
    assert salient_channels(1) != salient_channels(0)

    model = AutoModelForCausalLM.from_pretrained(str(lm_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(lm_dir))
    ids = tokenizer("Hello world", return_tensors="pt").input_ids
    assert int(ids.max()) < 1024
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 1024) and torch.isfinite(logits).all()

    again = build_tiny_qwen3_lm(tmp_path / "lm-again", seed=1)
    other = build_tiny_qwen3_lm(tmp_path / "lm-other", seed=2)
    assert sha256_file(again / "model.safetensors") == sha256_file(lm_dir / "model.safetensors")
    assert sha256_file(other / "model.safetensors") != sha256_file(lm_dir / "model.safetensors")


def test_build_tiny_darwin_reuses_existing(tiny_root: dict[str, Path]) -> None:
    root = tiny_root["tiny-darwin"].parent
    before = {name: (path / "model.safetensors").stat().st_mtime_ns for name, path in tiny_root.items()}
    again = build_tiny_darwin(root, seed=0, alpha=0.03)
    assert again == tiny_root
    assert {name: (path / "model.safetensors").stat().st_mtime_ns for name, path in again.items()} == before


def test_existing_out_refused(tmp_path: Path) -> None:
    from tts_awq.errors import UserError

    (tmp_path / "taken").mkdir()
    with pytest.raises(UserError, match="already exists"):
        build_tiny_qwen3_lm(tmp_path / "taken")
