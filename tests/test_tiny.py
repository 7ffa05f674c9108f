"""Tiny random checkpoints: real qwen-tts classes, real layout and special ids, deterministic, AWQ-salient."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tts_awq.checkpoint import TensorStore, detect_layout, sha256_file
from tts_awq.testing.presets import PRESETS, TINY, get_preset
from tts_awq.testing.tiny import (
    CODEC_IDS,
    CODEC_LANGUAGE_ID,
    DECODER,
    SAMPLES_PER_FRAME,
    TEXT_FIRST_SPECIAL_ID,
    TEXT_SPECIALS,
    TINY_TRANSFORMERS_VERSION,
    build_darwin,
    build_tiny_darwin,
    build_tiny_qwen3_lm,
    build_tiny_tts,
    build_tts,
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


# --------------------------------------------------------------------------------------------- presets

DOC_1_7B_SHAPES = {  # docs/qwen3-tts-checkpoint.md, section 3
    "talker.model.layers.0.self_attn.q_proj.weight": (2048, 2048),
    "talker.model.layers.27.self_attn.o_proj.weight": (2048, 2048),
    "talker.model.layers.0.self_attn.k_proj.weight": (1024, 2048),
    "talker.model.layers.27.self_attn.v_proj.weight": (1024, 2048),
    "talker.model.layers.0.mlp.gate_proj.weight": (6144, 2048),
    "talker.model.layers.0.mlp.up_proj.weight": (6144, 2048),
    "talker.model.layers.0.mlp.down_proj.weight": (2048, 6144),
    "talker.model.layers.0.self_attn.q_norm.weight": (128,),
    "talker.model.layers.0.self_attn.k_norm.weight": (128,),
    "talker.model.layers.0.input_layernorm.weight": (2048,),
    "talker.model.layers.0.post_attention_layernorm.weight": (2048,),
    "talker.model.norm.weight": (2048,),
    "talker.model.codec_embedding.weight": (3072, 2048),
    "talker.codec_head.weight": (3072, 2048),
    "talker.model.text_embedding.weight": (151936, 2048),
    "talker.text_projection.linear_fc1.weight": (2048, 2048),
    "talker.text_projection.linear_fc2.weight": (2048, 2048),
    "talker.text_projection.linear_fc1.bias": (2048,),
    "talker.text_projection.linear_fc2.bias": (2048,),
    "talker.code_predictor.small_to_mtp_projection.weight": (1024, 2048),
    "talker.code_predictor.model.codec_embedding.0.weight": (2048, 2048),
    "talker.code_predictor.model.codec_embedding.14.weight": (2048, 2048),
    "talker.code_predictor.lm_head.0.weight": (2048, 1024),
    "talker.code_predictor.lm_head.14.weight": (2048, 1024),
}


def _group(name: str) -> str:
    for prefix, group in (
        ("talker.model.layers.", "layers"),
        ("talker.model.text_embedding.", "text_embedding"),
        ("talker.code_predictor.", "code_predictor"),
        ("speaker_encoder.", "speaker_encoder"),
    ):
        if name.startswith(prefix):
            return group
    return "other"


def test_1_7b_plan_matches_documented_shapes(qwen_tts: types.SimpleNamespace, tmp_path: Path) -> None:
    from tts_awq.testing.tiny import (
        _fix_config_json,
        _save_meta_config,
        lm_config_kwargs,
        meta_lm_model,
        meta_tts_model,
        plan_parameters,
        tts_config_kwargs,
        weight_plan,
    )
    from tts_awq.upstream.blend import architecture_mismatches, ffn_pairs

    preset = PRESETS["1.7b"]
    tts = meta_tts_model(preset)  # meta device: nothing allocated
    plan = weight_plan(tts)
    assert {dtype for dtype, _ in plan.values()} == {torch.bfloat16}
    for name, shape in DOC_1_7B_SHAPES.items():
        assert plan[name][1] == shape, name
    assert not any(k.startswith("talker.model.layers.28.") for k in plan)
    assert "talker.code_predictor.model.layers.4.mlp.down_proj.weight" in plan
    assert "talker.code_predictor.model.layers.5.mlp.down_proj.weight" not in plan
    groups: dict[str, int] = {}
    for name, (_, shape) in plan.items():
        groups[_group(name)] = groups.get(_group(name), 0) + int(np.prod(shape))
    assert groups["layers"] == 1_409_408_000  # 1409.4 M
    assert groups["text_embedding"] == 151936 * 2048  # 311.2 M
    assert round(groups["code_predictor"] / 1e6, 1) == 175.1
    assert round(groups["speaker_encoder"] / 1e6) == 12
    assert round(groups["other"] / 1e6) == 21
    assert round(plan_parameters(plan) / 1e6, 1) == 1928.7
    assert round(plan_parameters(plan) * 2 / 1e9, 2) == 3.86  # GB in BF16

    talker = tts_config_kwargs(preset)["talker_config"]
    assert talker["rope_scaling"] == {"rope_type": "default", "mrope_section": [24, 20, 20], "interleaved": True}
    assert talker["max_position_embeddings"] == 32768 and talker["rope_theta"] == 1e6
    assert talker["text_hidden_size"] == 2048 and talker["vocab_size"] == 3072
    assert talker["code_predictor_config"]["num_code_groups"] == 16
    speaker = tts.config.speaker_encoder_config
    assert speaker.enc_dim == 2048 and speaker.enc_channels == [512, 512, 512, 512, 1536]  # qwen-tts defaults

    lm = meta_lm_model(preset)
    lm_plan = weight_plan(lm)
    assert "lm_head.weight" not in lm_plan  # tied to embed_tokens, as in Qwen3-1.7B
    assert lm_plan["model.embed_tokens.weight"][1] == (151936, 2048)
    layer_keys = [k for k in lm_plan if k.startswith("model.layers.")]
    assert len(layer_keys) == 28 * 11
    for key in layer_keys:
        assert lm_plan[key] == plan["talker." + key], key
    assert round(plan_parameters(lm_plan) / 1e6, 1) == 1720.6
    lm_config = {**lm_config_kwargs(preset), "model_type": "qwen3"}
    assert lm_config["tie_word_embeddings"] is True and lm_config["head_dim"] == 128
    assert architecture_mismatches(talker, lm_config) == []
    assert all(lm_plan[llm][1] == plan[tts_name][1] for tts_name, llm in ffn_pairs(28))

    # the config files the build writes: detect_layout and qwen-tts read them
    (tmp_path / "tts").mkdir()
    (tmp_path / "lm").mkdir()
    _save_meta_config(tts, tmp_path / "tts", generation_config=False)
    _fix_config_json(tmp_path / "tts" / "config.json", drop_speaker_model_type=True)
    _save_meta_config(lm, tmp_path / "lm", generation_config=True)
    _fix_config_json(tmp_path / "lm" / "config.json")
    layout = detect_layout(tmp_path / "tts")
    assert layout.kind == "qwen3_tts" and layout.decoder.num_layers == 28 and layout.decoder.hidden_size == 2048
    assert layout.decoder.config["head_dim"] == 128 and layout.decoder.config["num_key_value_heads"] == 8
    lm_layout = detect_layout(tmp_path / "lm")
    assert lm_layout.kind == "causal_lm" and lm_layout.decoder.head == "model.embed_tokens.weight"
    config = qwen_tts.Qwen3TTSConfig.from_pretrained(str(tmp_path / "tts"))
    assert config.talker_config.num_hidden_layers == 28 and config.tts_model_size == "1b7"
    assert json.loads((tmp_path / "tts" / "config.json").read_text())["dtype"] == "bfloat16"


#: A tiny-shaped preset on the streamed path (the 1.7b recipe), with a sharded LM.
SMALL_STREAMED = dataclasses.replace(
    PRESETS["1.7b"],
    name="small-streamed",
    tts_dir="small-tts-base",
    lm_dir="small-qwen3-lm",
    darwin_dir="small-darwin",
    decoder=TINY.decoder,
    mrope_section=TINY.mrope_section,
    text_hidden_size=TINY.text_hidden_size,
    code_predictor=TINY.code_predictor,
    speaker_encoder=TINY.speaker_encoder,
    tts_model_size=TINY.tts_model_size,
    lm_max_shard_bytes=8 << 20,
)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_darwin(tmp_path_factory.mktemp("small"), seed=0, alpha=0.03, preset=SMALL_STREAMED)


def _model_files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "provenance.json"
    }


def test_streamed_build_matches_save_pretrained_layout(
    small_root: dict[str, Path], tiny_root: dict[str, Path]
) -> None:
    from tts_awq.upstream.blend import lerp_weights

    tts_dir, lm_dir, darwin_dir = small_root.values()
    assert list(small_root) == ["small-tts-base", "small-qwen3-lm", "small-darwin"]
    present = {p.relative_to(tts_dir).as_posix() for p in tts_dir.rglob("*") if p.is_file()}
    assert set(REAL_LAYOUT) <= present
    # same shapes as the tiny preset: the meta-device plan must be exactly what save_pretrained wrote
    streamed, saved = TensorStore(tts_dir), TensorStore(tiny_root["tiny-tts-base"])
    assert streamed.keys() == saved.keys()
    assert all(streamed.info(k).shape == saved.info(k).shape for k in saved.keys())
    assert {streamed.info(k).dtype for k in streamed.keys()} == {"BF16"}
    assert streamed.metadata == saved.metadata
    tiny_files, small_files = _model_files(tiny_root["tiny-tts-base"]), _model_files(tts_dir)
    for rel in ("config.json", "generation_config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                "preprocessor_config.json", "speech_tokenizer/model.safetensors", "speech_tokenizer/config.json"):
        assert small_files[rel] == tiny_files[rel], rel  # shared config / tokenizer / codec code
    assert small_files["model.safetensors"] != tiny_files["model.safetensors"]

    lm = TensorStore(lm_dir)
    assert len(lm.files) > 1 and (lm_dir / "model.safetensors.index.json").is_file()
    assert "lm_head.weight" not in lm and lm.info("model.embed_tokens.weight").shape == (151936, 128)
    assert {lm.info(k).dtype for k in lm.keys()} == {"BF16"}
    assert detect_layout(lm_dir).kind == "causal_lm" and detect_layout(darwin_dir).kind == "qwen3_tts"

    darwin = TensorStore(darwin_dir)
    name = "talker.model.layers.1.mlp.up_proj.weight"
    expected = lerp_weights(streamed.get(name), lm.get("model.layers.1.mlp.up_proj.weight"), 0.03)
    assert torch.equal(darwin.get(name), expected) and not torch.equal(expected, streamed.get(name))
    assert torch.equal(darwin.get("talker.model.norm.weight"), streamed.get("talker.model.norm.weight"))


def test_streamed_weights_are_salient(small_root: dict[str, Path]) -> None:
    tts_dir, lm_dir, _ = small_root.values()
    for directory, prefix, seed in ((tts_dir, "talker.model.layers.", 0), (lm_dir, "model.layers.", 1)):
        store = TensorStore(directory)
        channels = salient_channels(seed)
        others = [c for c in range(DECODER["hidden_size"]) if c not in channels]
        for layer in range(DECODER["num_hidden_layers"]):
            for norm in ("input_layernorm", "post_attention_layernorm"):
                weight = store.get(f"{prefix}{layer}.{norm}.weight").float()
                assert (weight[channels] >= 7.9).all() and (weight[channels] <= 12.1).all()
                assert torch.equal(weight[others], torch.ones(len(others)))
            for name in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj"):
                weight = store.get(f"{prefix}{layer}.{name}.weight").float()
                assert float(weight.abs().max()) > 5 * float(weight.std())  # heavy tail
                assert 0.015 < float(weight.std()) < 0.04
        provenance = json.loads((directory / "provenance.json").read_text())["parameters"]
        assert provenance["salience"]["channels"] == channels and provenance["preset"] == "small-streamed"
    store = TensorStore(tts_dir)
    head = store.get("talker.codec_head.weight").float()
    assert float(head[CODEC_IDS["codec_eos_token_id"]].std()) > 2 * float(head[:2048].std())
    assert float(store.get("talker.text_projection.linear_fc1.bias").abs().max()) == 0.0
    assert torch.equal(store.get("talker.code_predictor.model.norm.weight"), torch.ones(64, dtype=torch.bfloat16))


def test_streamed_build_is_deterministic_and_reused(small_root: dict[str, Path], tmp_path: Path) -> None:
    again = build_darwin(tmp_path / "again", seed=0, alpha=0.03, preset=SMALL_STREAMED)
    for first, second in zip(small_root.values(), again.values(), strict=True):
        assert _model_files(first) == _model_files(second), first.name
    other = build_tts(tmp_path / "other", seed=5, preset=SMALL_STREAMED)
    assert sha256_file(other / "model.safetensors") != sha256_file(small_root["small-tts-base"] / "model.safetensors")

    root = next(iter(small_root.values())).parent
    marker = json.loads((root / SMALL_STREAMED.marker_name).read_text())
    assert marker["preset"] == "small-streamed" and marker["preset_fingerprint"] == SMALL_STREAMED.fingerprint()
    assert isinstance(marker["model_sha256"]["small-qwen3-lm"], dict)  # one hash per shard
    before = {name: _model_files(path) for name, path in small_root.items()}
    stamps = {name: (path / "config.json").stat().st_mtime_ns for name, path in small_root.items()}
    assert build_darwin(root, seed=0, alpha=0.03, preset=SMALL_STREAMED) == small_root
    assert {name: (path / "config.json").stat().st_mtime_ns for name, path in small_root.items()} == stamps
    assert {name: _model_files(path) for name, path in small_root.items()} == before


def test_streamed_checkpoints_load_and_synthesize(
    small_root: dict[str, Path], qwen_tts: types.SimpleNamespace
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tts = qwen_tts.Qwen3TTSModel.from_pretrained(
        str(small_root["small-darwin"]), dtype=torch.bfloat16, device_map="cpu", attn_implementation="sdpa"
    )
    torch.manual_seed(0)
    wavs, sr = tts.generate_voice_clone(
        text="Hello.", language="english", ref_audio=(reference_wav(), 24000), x_vector_only_mode=True,
        max_new_tokens=4,
    )  # fmt: skip
    wav = np.asarray(wavs[0])
    assert sr == 24000 and 0 < wav.size <= 4 * SAMPLES_PER_FRAME and np.isfinite(wav).all()

    lm_dir = small_root["small-qwen3-lm"]
    tokenizer = AutoTokenizer.from_pretrained(str(lm_dir))
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "</think>"]) == [
        151643, 151644, 151645, 151668,
    ]  # fmt: skip
    assert tokenizer.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(str(lm_dir), dtype=torch.float32)
    ids = tokenizer("<|im_start|>user\nHello world<|im_end|>", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 151936) and torch.isfinite(logits).all()
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight


def _script() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_tiny_checkpoint", Path(__file__).resolve().parent.parent / "scripts" / "make_tiny_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_unknown_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _script().main([str(tmp_path / "out"), "--preset", "7b"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "tiny, 1.7b" in lines[0]
    assert not (tmp_path / "out").exists()


def test_script_default_preset_is_tiny(tiny_root: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root = tiny_root["tiny-darwin"].parent
    assert _script().main([str(root)]) == 0  # reuses the session's tiny build
    assert capsys.readouterr().out.splitlines() == [str(path) for path in tiny_root.values()]
    assert get_preset("tiny") is TINY and TINY.marker_name == ".tiny-darwin.json"


def test_random_tensor_is_deterministic_at_real_size() -> None:
    from tts_awq.testing.tiny import HEAVY_TAIL_FRACTION, _random_tensor, _Recipe

    def make() -> torch.Tensor:
        recipe = _Recipe(seed=0, std=0.02, layer_prefix="talker.model.layers.", channels=[1, 2, 3])
        return _random_tensor("talker.model.layers.3.mlp.up_proj.weight", torch.bfloat16, (6144, 2048), recipe)

    threads = torch.get_num_threads()
    first = make()
    torch.set_num_threads(1)
    try:
        second = make()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, second)
    tail = int((first.float().abs() >= 0.12 - 1e-3).sum())  # heavy-tail entries are >= 6 sigma
    assert 0.9 * HEAVY_TAIL_FRACTION * first.numel() < tail < 1.1 * HEAVY_TAIL_FRACTION * first.numel()


def test_threaded_generation_gives_the_sequential_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1.7b build generates tensors on a thread pool: every tensor equals the one-at-a-time result, in plan
    order, whatever the thread count (each tensor has its own generator, seeded by its name)."""
    from tts_awq.testing import tiny

    plan = {f"talker.model.layers.{i}.mlp.up_proj.weight": (torch.bfloat16, (96, 64)) for i in range(7)}
    plan |= {f"talker.model.layers.{i}.input_layernorm.weight": (torch.bfloat16, (64,)) for i in range(7)}

    def recipe() -> tiny._Recipe:
        return tiny._Recipe(seed=3, std=0.02, layer_prefix="talker.model.layers.", channels=[1, 5, 9])

    sequential = {name: tiny._random_tensor(name, *plan[name], recipe()) for name in plan}
    for threads in (1, 4):
        monkeypatch.setattr(tiny.os, "cpu_count", lambda n=threads: n)
        made = list(tiny._generated(plan, recipe()))
        assert [name for name, _ in made] == list(plan)
        assert all(torch.equal(tensor, sequential[name]) for name, tensor in made)
