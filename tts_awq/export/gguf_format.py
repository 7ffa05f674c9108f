"""GGUF for llama.cpp's Qwen3-TTS support (``mtmd: support Qwen3-TTS``): the talker, the libllama part.

llama.cpp splits Qwen3-TTS in two files. Its converter (``Qwen3TTSTalkerModel``, arch ``qwen3tts``) puts the talker
in the model GGUF: Qwen3 decoder tensor names, the text projection MLP folded into the text embedding
(``fc2(act(fc1(E)))``) with the codec embedding appended after the text vocabulary (``token_embd``), ``codec_head``
as ``output``, codec tokens appended to the vocabulary, ``suppress_tokens`` for the codec ids that are not sampled,
and the codec EOS as EOS. That file is written here, with every INT4 talker linear as ``Q4_1`` built from the AWQ
integers (not re-quantized): one group of g = four (g = 128) 32-weight blocks with ``d = s`` and ``m = -s*z``
(float16), so ``d*q + m = s*(q - z)`` up to the float16 rounding of ``m``. Dense tensors keep BF16 (norms F32).

The code predictor and speaker encoder go to llama.cpp's mmproj GGUF; they are dense in a tts-awq package, so
llama.cpp's own ``convert_hf_to_gguf.py --mmproj`` converts them from the package directly (not done here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tts_awq.checkpoint import read_json, write_json
from tts_awq.errors import UserError
from tts_awq.export.check import LinearChecks, fp16_half_ulp
from tts_awq.export.registry import ExportResult, register
from tts_awq.export.source import ExportSource, Int4Weights

ARCH = "qwen3tts"
GGUF_NAME = "talker-q4_1.gguf"
QK = 32  # weights per Q4_1 block
CHAT_TEMPLATE = "{% for m in messages %}{{m['content']}}{% endfor %}"  # llama.cpp's converter's placeholder
SUPPRESS_TOKENS_KEY = "tokenizer.ggml.suppress_tokens"
#: decoder-layer tensor (after the layer prefix) -> llama.cpp name (after ``blk.N.``)
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.q_proj": "attn_q.weight",
    "self_attn.k_proj": "attn_k.weight",
    "self_attn.v_proj": "attn_v.weight",
    "self_attn.o_proj": "attn_output.weight",
    "mlp.gate_proj": "ffn_gate.weight",
    "mlp.up_proj": "ffn_up.weight",
    "mlp.down_proj": "ffn_down.weight",
}
TEXT_PROJECTION = "talker.text_projection"


def q4_1_blocks(w: Int4Weights) -> np.ndarray:
    """uint8 ``[out, in/32*20]``: per block fp16 d, fp16 m, then 16 bytes (weight j low nibble, j+16 high)."""
    if w.group_size % QK:
        raise UserError(f"{w.name}: group size {w.group_size} is not a multiple of {QK}; Q4_1 needs one (d, m) per "
                        f"{QK} weights, so only g = 32, 64, 128, ... export to GGUF")
    out, inp = w.out_features, w.in_features
    per_group = w.group_size // QK
    d = w.scales.to(torch.float16).repeat_interleave(per_group, dim=1)  # [out, in/32]
    m = (-(w.scales.float() * w.zeros.float())).to(torch.float16).repeat_interleave(per_group, dim=1)
    q = w.q.reshape(out, inp // QK, QK).to(torch.uint8)
    qs = q[..., :16] | (q[..., 16:] << 4)  # [out, in/32, 16]
    blocks = torch.cat([d.view(torch.uint8).reshape(out, -1, 2), m.view(torch.uint8).reshape(out, -1, 2), qs], dim=-1)
    return blocks.reshape(out, -1).numpy()


def m_rounding_bound(w: Int4Weights) -> float:
    """Largest error the float16 rounding of ``m = -s*z`` can make in this linear (0 where it is exact)."""
    exact = w.scales.float() * w.zeros.float()
    return float(fp16_half_ulp(exact).max()) if exact.numel() else 0.0


def _bf16(t: torch.Tensor) -> tuple[np.ndarray, Any]:
    import gguf

    return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16), gguf.GGMLQuantizationType.BF16


def _f32(t: torch.Tensor) -> tuple[np.ndarray, Any]:
    import gguf

    return t.float().contiguous().numpy(), gguf.GGMLQuantizationType.F32


def folded_text_embedding(source: ExportSource, act: str, rows: int = 8192) -> torch.Tensor:
    """``fc2(act(fc1(text_embedding)))`` in float32, a chunk of rows at a time, as llama.cpp's converter folds it."""
    acts = {"silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu, "relu": torch.nn.functional.relu}
    if act not in acts:
        raise UserError(f"{source.root / 'config.json'}: talker hidden_act {act!r} is not one llama.cpp's converter "
                        f"folds ({', '.join(acts)})")
    get = source.store.get
    fc1w, fc1b = get(f"{TEXT_PROJECTION}.linear_fc1.weight").float(), get(f"{TEXT_PROJECTION}.linear_fc1.bias").float()
    fc2w, fc2b = get(f"{TEXT_PROJECTION}.linear_fc2.weight").float(), get(f"{TEXT_PROJECTION}.linear_fc2.bias").float()
    embed = source.store.get_mapped("talker.model.text_embedding.weight")
    parts = []
    for start in range(0, embed.shape[0], rows):
        hidden = acts[act](torch.nn.functional.linear(embed[start:start + rows].float(), fc1w, fc1b))
        parts.append(torch.nn.functional.linear(hidden, fc2w, fc2b).to(torch.bfloat16))
    return torch.cat(parts)


def codec_token_names(talker: dict[str, Any]) -> list[str]:
    """``<|codec_i|>`` for every codec id, named after talker_config's ``*_id`` fields where they point (as
    llama.cpp's converter names them)."""
    names = [f"<|codec_{i}|>" for i in range(int(talker["vocab_size"]))]
    for key, value in talker.items():
        if not key.endswith("_id"):
            continue
        prefix = key[: -len("_id")]
        if isinstance(value, int) and 0 <= value < len(names):
            names[value] = f"<|{prefix}|>"
        elif isinstance(value, dict):
            for sub, sub_value in value.items():
                if isinstance(sub_value, int) and 0 <= sub_value < len(names):
                    names[sub_value] = f"<|{prefix}_{sub}|>"
    return names


def add_vocab(writer: Any, source: ExportSource, talker: dict[str, Any]) -> tuple[int, int]:
    """Text tokens (padded to text_vocab_size) then codec tokens; returns (vocab size, codec EOS id)."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.root))
    text_vocab = int(talker["text_vocab_size"])
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    special = {i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
    tokens, types = [], []
    for i in range(text_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif by_id[i] in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    codec = codec_token_names(talker)
    tokens += codec
    types += [gguf.TokenType.CONTROL] * len(codec)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")  # Qwen3-TTS's text tokenizer is Qwen2's
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    vocab = len(tokens)
    eos = text_vocab + int(talker["codec_eos_token_id"])
    special_vocab = gguf.SpecialVocab(source.root, load_merges=True, n_vocab=vocab)
    special_vocab.special_token_ids["eos"] = eos
    special_vocab.add_special_token.pop("eos", None)
    special_vocab.add_to_gguf(writer, quiet=True)
    writer.add_add_eos_token(False)
    writer.add_array(SUPPRESS_TOKENS_KEY, [i for i in range(vocab - 1024, vocab) if i != eos])
    return vocab, eos


def add_hparams(writer: Any, talker: dict[str, Any], num_layers: int) -> None:
    import gguf

    head_dim = int(talker.get("head_dim") or talker["hidden_size"] // talker["num_attention_heads"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_block_count(num_layers)
    writer.add_context_length(int(talker.get("max_position_embeddings", 32768)))
    writer.add_embedding_length(int(talker["hidden_size"]))
    writer.add_feed_forward_length(int(talker["intermediate_size"]))
    writer.add_head_count(int(talker["num_attention_heads"]))
    writer.add_head_count_kv(int(talker["num_key_value_heads"]))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(talker.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(talker.get("rms_norm_eps", 1e-6)))
    sections = list((talker.get("rope_scaling") or {}).get("mrope_section") or [])
    if sections:
        writer.add_rope_dimension_sections([*sections, *[0] * (4 - len(sections))][:4])
    writer.add_chat_template(CHAT_TEMPLATE)


def talker_tensors(source: ExportSource, act: str) -> dict[str, tuple[np.ndarray, Any]]:
    """Every tensor of the talker GGUF, by llama.cpp name, with its GGML type."""
    import gguf

    get, prefix = source.store.get, source.layout.decoder.layer_prefix
    codec_embed = get("talker.model.codec_embedding.weight")
    tensors = {
        "token_embd.weight": _bf16(torch.cat([folded_text_embedding(source, act), codec_embed.to(torch.bfloat16)])),
        "output.weight": _bf16(get("talker.codec_head.weight")),
        "output_norm.weight": _f32(get("talker.model.norm.weight")),
    }
    int4 = set(source.int4)
    for i in range(source.layout.decoder.num_layers):
        for rest, target in LAYER_NAMES.items():
            module = f"{prefix}{i}.{rest}"
            name = f"blk.{i}.{target}"
            if module in int4:
                tensors[name] = (q4_1_blocks(source.weights(module)), gguf.GGMLQuantizationType.Q4_1)
            elif rest.endswith(".weight") and "norm" in rest:
                tensors[name] = _f32(get(module))
            else:
                tensors[name] = _bf16(get(f"{module}.weight"))
    return tensors


def gguf_name(module: str, prefix: str) -> str:
    layer, _, rest = module[len(prefix):].partition(".")
    return f"blk.{layer}.{LAYER_NAMES[rest]}"


@register("gguf", runtime="llama.cpp (Qwen3-TTS support)", library_name="llama.cpp")
def export_gguf(source: ExportSource, out: Path) -> ExportResult:
    """GGUF talker for llama.cpp (arch qwen3tts), INT4 linears as Q4_1 from the AWQ integers (5.0 bits/weight)."""
    import gguf

    talker = dict(source.config.get("talker_config") or {})
    missing = [k for k in ("text_vocab_size", "codec_eos_token_id", "vocab_size") if k not in talker]
    if missing:
        raise UserError(f"{source.root / 'config.json'}: talker_config lacks {', '.join(missing)}; restore config.json")
    writer = gguf.GGUFWriter(out / GGUF_NAME, ARCH)
    writer.add_name(source.root.name)
    add_hparams(writer, talker, source.layout.decoder.num_layers)
    vocab, eos = add_vocab(writer, source, talker)
    for name, (array, kind) in talker_tensors(source, str(talker.get("hidden_act", "silu"))).items():
        writer.add_tensor(name, array, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    write_json(out / "config.json", read_json(source.root / "config.json", "config.json"))

    reader = gguf.GGUFReader(out / GGUF_NAME)
    by_name = {t.name: t for t in reader.tensors}
    prefix = source.layout.decoder.layer_prefix
    checks = LinearChecks("m = -s*z rounded to float16: |dw| <= half a float16 step of s*z")

    def read_back(module: str) -> tuple[torch.Tensor, float]:
        tensor = by_name[gguf_name(module, prefix)]
        dense = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        return torch.from_numpy(np.array(dense, dtype=np.float32)), m_rounding_bound(source.weights(module))

    checks.run(source, read_back)
    return ExportResult(check=checks.summary(), details={"gguf_file": GGUF_NAME, "arch": ARCH, "vocab_size": vocab,
                                                         "codec_eos_id": eos, "tensors": len(by_name)},
                        notes=["the code predictor and speaker encoder (dense in the package) go to llama.cpp's mmproj "
                               "GGUF: convert them with llama.cpp's convert_hf_to_gguf.py --mmproj from the package"])
