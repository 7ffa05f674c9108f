"""Calibration activations: what the decoder stack really sees.

For a Qwen3-TTS checkpoint the talker is fed only ``inputs_embeds`` (text projection + summed codebook
embeddings + the speaker x-vector), so we run the full-precision model in voice-clone mode with a fixed seed,
let it generate its codec continuation, and capture every row that enters ``talker.model`` (prefill and each
decode step). For a plain causal LM we embed tokenized prompt text.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tts_awq.checkpoint.files import sha256_file
from tts_awq.checkpoint.layout import CODEC_DIR, Layout
from tts_awq.checkpoint.store import TensorStore
from tts_awq.errors import UserError
from tts_awq.memory import release_free_memory
from tts_awq.prompts import Prompt, VoiceClip, load_prompts, load_voice_clips, read_voice
from tts_awq.qwen_tts import VoiceClone, default_dtype, load_tts_model, synthesize
from tts_awq.qwen_tts.decode import FastDecode

log = logging.getLogger(__name__)


@dataclass
class Calibration:
    sequences: list[torch.Tensor]  # [seq_len_i, hidden] float32 on CPU
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return sum(int(x.shape[0]) for x in self.sequences)


def capture_tts(model_dir: Path, prompts: list[Prompt], voices: list[VoiceClip], seed: int, seq_len: int,
                device: str, dtype: torch.dtype, batch_size: int = 8, progress: bool = True) -> list[torch.Tensor]:
    """Voice-clone generation on every prompt (x-vector and ICL modes alternate); returns talker input rows.

    qwen-tts's own end-to-end ``generate_voice_clone`` runs with its talker decode replaced by the "exact"
    :class:`~tts_awq.qwen_tts.decode.FastDecode` (bit-identical codes and rows to qwen-tts's nested ``generate``,
    tests/test_decode.py; ~1.7x faster on the tiny talker), which records each item's talker input rows up to its
    first EOS at positions 0..L-1."""
    from tqdm.auto import tqdm

    tts = load_tts_model(model_dir, device, dtype)
    audio = [read_voice(v) for v in voices]
    sequences: list[torch.Tensor] = []
    starts = range(0, len(prompts), batch_size)
    for batch_index, start in enumerate(tqdm(starts, desc="calibration (TTS generate)", disable=not progress)):
        batch = prompts[start : start + batch_size]
        voice_ids = [(start + i) % len(voices) for i in range(len(batch))]
        icl = (batch_index % 2) == 1  # alternate x-vector-only and ICL batches
        with FastDecode(tts.model.talker, record_rows=True) as decoder:
            synthesize(tts, [VoiceClone(text=p.text, lang=p.lang, ref_audio=audio[v], ref_text=voices[v].ref_text,
                                        icl=icl, seed=seed + batch_index) for p, v in zip(batch, voice_ids, strict=True)],
                       max_new_tokens=seq_len)
        sequences.extend(rows[:seq_len] for rows in decoder.rows)
    del tts
    gc.collect()  # the full-precision model must be gone before the layer loop (its RSS would stay otherwise)
    release_free_memory()
    return sequences


def capture_causal_lm(model_dir: Path, store: TensorStore, embed_key: str, prompts: list[Prompt],
                      seq_len: int, n_samples: int) -> list[torch.Tensor]:
    """Tokenize the prompt texts as one stream, cut it into ``seq_len`` blocks and embed them."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise UserError(f"{model_dir}: no usable tokenizer for text calibration; add tokenizer files") from exc
    ids: list[int] = []
    for prompt in prompts:
        ids.extend(tokenizer(prompt.text + "\n\n", add_special_tokens=False)["input_ids"])
    embed = store.get(embed_key).float()
    ids_t = torch.tensor(ids, dtype=torch.long).clamp(max=embed.shape[0] - 1)
    blocks = [ids_t[i : i + seq_len] for i in range(0, len(ids_t), seq_len)]
    blocks = [b for b in blocks if len(b) >= min(seq_len, 16)][:n_samples] or [ids_t[:seq_len]]
    return [embed[b] for b in blocks]


def build_calibration(layout: Layout, model_dir: Path, store: TensorStore, source: str | None, seed: int,
                      seq_len: int, n_samples: int, device: str, batch_size: int = 8,
                      split: str = "calib", progress: bool = True) -> Calibration:
    prompts, sha = load_prompts(source, split=split)
    prompts = prompts[:n_samples]
    info: dict[str, Any] = {
        "name": str(source) if source else f"builtin:calib_data/{split}.jsonl",
        "sha256": sha,
        "n_prompts": len(prompts),
        "seq_len": seq_len,
        "seed": seed,
    }
    if layout.kind == "qwen3_tts":
        if not (model_dir / CODEC_DIR).is_dir():
            layout.require_codec()
        voices = load_voice_clips()
        dtype = default_dtype(device)
        seqs = capture_tts(model_dir, prompts, voices, seed, seq_len, device, dtype, batch_size, progress)
        info.update({"mode": "qwen3-tts voice clone (x-vector / ICL alternating), talker inputs_embeds",
                     "voices": [v.name for v in voices], "model_dtype": str(dtype).removeprefix("torch."),
                     "voices_sha256": {v.name: sha256_file(v.path) for v in voices},
                     "positions": "talker position ids checked to be 0..L-1 for every captured row"})
    else:
        seqs = capture_causal_lm(model_dir, store, layout.decoder.embed or "", prompts, seq_len, n_samples)
        info["mode"] = "causal LM, tokenized prompt text embedded with the checkpoint's embed_tokens"
    if not seqs:
        raise UserError(f"{info['name']}: calibration produced no sequences; check the prompts file")
    info["n_samples"] = len(seqs)
    info["n_tokens"] = sum(int(x.shape[0]) for x in seqs)
    info["lengths"] = [int(x.shape[0]) for x in seqs]
    return Calibration(seqs, info)
