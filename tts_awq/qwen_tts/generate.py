"""Seeded voice-clone generation (one item or a batch) returning codec frames, and codec decoding.

Generation asks for ``max_new_tokens + 1`` talker tokens, so an item "stopped" when its first EOS came within
``max_new_tokens`` tokens (at most ``max_new_tokens - 1`` audio frames); otherwise it ran to the limit (a runaway).

Engines (``tts_awq.constants.ENGINES``, :mod:`tts_awq.qwen_tts.decode`): "fast" gives every item its own
generator (:func:`item_seed`), so an item's codes do not depend on its batch; "exact" and "qwen-tts" sample a
whole batch from the global generator seeded with the first item's seed, so a batched item's tokens depend on
which items share its batch (deterministic for a given seed, job order and batch size, identical to the
one-at-a-time run only at batch size 1).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tts_awq.constants import ENGINES
from tts_awq.qwen_tts.capture import TalkerCapture
from tts_awq.qwen_tts.decode import FastDecode
from tts_awq.qwen_tts.masks import fast_masks
from tts_awq.qwen_tts.model import eos_id, language_for, supported_languages


@dataclass(frozen=True)
class VoiceClone:
    """One voice-clone request: text in a language, spoken in the voice of ``ref_audio``."""

    text: str
    lang: str
    ref_audio: tuple[np.ndarray, int]
    ref_text: str
    icl: bool  # in-context (reference text + codes in the prompt) rather than x-vector only
    seed: int
    voice: str = ""  # a name for ref_audio: requests with the same name share one cached voice prompt


@dataclass
class VoiceCloneResult:
    codes: torch.Tensor  # [frames, num_code_groups] long, CPU
    stopped: bool  # EOS within max_new_tokens
    rows: torch.Tensor | None = None  # talker inputs_embeds rows [prefill + decode, hidden] (when captured)
    prefill: int = 0  # number of prefill rows
    ref_code: torch.Tensor | None = None  # ICL reference codes (decoded in front of the output, then cut)

    @property
    def frames(self) -> int:
        return int(self.codes.shape[0])


def item_seed(req: VoiceClone) -> int:
    """The per-item generator seed of the "fast" engine: a hash of the job's seed and request, so jobs that share
    a seed but not a prompt draw independent streams, and a package and its reference draw the same one."""
    key = "\0".join([str(req.seed), req.text, req.lang, req.voice, req.ref_text, str(req.icl)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def _voice_prompt(tts: Any, req: VoiceClone, cache: dict[Any, Any] | None) -> list[Any]:
    """qwen-tts's voice-clone prompt item (speaker x-vector, and the codec-encoded reference for ICL). It is a
    deterministic function of the model, the clip and the mode, so ``cache`` may keep it across generations."""
    key = (id(tts), req.voice, req.ref_text, req.icl)
    if cache is not None and req.voice and key in cache:
        return cache[key]
    items = tts.create_voice_clone_prompt(ref_audio=req.ref_audio, ref_text=req.ref_text,
                                          x_vector_only_mode=not req.icl)
    if cache is not None and req.voice:
        cache[key] = items
    return items


@torch.no_grad()
def generate_voice_clone(tts: Any, requests: list[VoiceClone], max_new_tokens: int, capture: bool = False,
                         prompt_cache: dict[Any, Any] | None = None, engine: str = "fast",
                         slots: int | None = None, decoder: FastDecode | None = None) -> list[VoiceCloneResult]:
    """Generate ``requests`` as one batch seeded with ``requests[0].seed``; optionally record the talker rows.
    ``prompt_cache`` (any dict the caller keeps) reuses voice prompts of named voices. ``engine``: "fast" decodes
    with :class:`~tts_awq.qwen_tts.decode.FastDecode` and per-item draws (each item seeded by :func:`item_seed`,
    so its codes do not depend on the batch), "exact" with the same loop drawing like ``generate`` (codes
    identical to "qwen-tts"), "qwen-tts" with qwen-tts's own talker ``generate``. ``slots`` ("fast" only): at
    most this many items decode at once, the next one joining when one finishes (None: all at once). ``decoder``: a
    :class:`FastDecode` (subclass) used instead of the engine's own, e.g. one that feeds given codes."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if not requests:
        return []
    torch.manual_seed(requests[0].seed)
    items = []
    for req in requests:
        items.extend(_voice_prompt(tts, req, prompt_cache))
    prompt_dict = tts._prompt_items_to_voice_clone_prompt(items)
    input_ids = tts._tokenize_texts([tts._build_assistant_text(r.text) for r in requests])
    ref_ids = ([tts._tokenize_texts([tts._build_ref_text(r.ref_text)])[0] if r.icl else None for r in requests]
               if any(r.icl for r in requests) else None)
    kwargs = tts._merge_generate_kwargs(max_new_tokens=max_new_tokens + 1)
    supported = supported_languages(tts)
    languages = [language_for(tts, r.lang, supported) for r in requests]
    fast = engine != "qwen-tts"
    hook = TalkerCapture(tts.model.talker, eos_id(tts), 10**9) if capture and not fast else None
    seeds = [item_seed(r) for r in requests] if engine == "fast" else None
    if decoder is None:
        decoder = (FastDecode(tts.model.talker, seeds, record_rows=capture, slots=slots) if fast
                   else contextlib.nullcontext())
    torch.manual_seed(requests[0].seed)
    try:
        with decoder:
            codes_list, _ = tts.model.generate(input_ids=input_ids, ref_ids=ref_ids, voice_clone_prompt=prompt_dict,
                                               languages=languages, **kwargs)
    finally:
        if hook is not None:
            hook.close()
    if hook is not None and hook.position_mismatches:
        raise RuntimeError(f"talker positions were not 0..L-1 in {hook.position_mismatches} captured calls; this "
                           "qwen-tts version feeds the talker differently and replaying its rows would be wrong")
    if capture and fast:
        rows, prefill = decoder.rows, decoder.prefill
    elif hook is not None:
        rows, prefill = hook.sequences(), [hook.prefill_rows(i) for i in range(len(requests))]
    ref_codes = prompt_dict.get("ref_code") or [None] * len(requests)
    results = []
    for i, codes in enumerate(codes_list):
        codes = codes.detach().to("cpu", torch.long)
        ref_code = ref_codes[i]
        results.append(VoiceCloneResult(
            codes=codes, stopped=codes.shape[0] < max_new_tokens,
            rows=rows[i] if capture else None, prefill=prefill[i] if capture else 0,
            ref_code=None if ref_code is None else ref_code.detach().to("cpu", torch.long)))
    return results


@torch.no_grad()
def synthesize(tts: Any, requests: list[VoiceClone], max_new_tokens: int) -> tuple[list[np.ndarray], int]:
    """qwen-tts's own end-to-end ``generate_voice_clone`` on a batch (all items share ``requests[0].icl``), seeded
    with ``requests[0].seed`` once: the path users run, which calibration records with a :class:`TalkerCapture`."""
    torch.manual_seed(requests[0].seed)
    supported = supported_languages(tts)
    icl = requests[0].icl
    return tts.generate_voice_clone(
        text=[r.text for r in requests],
        language=[language_for(tts, r.lang, supported) for r in requests],
        ref_audio=[r.ref_audio for r in requests],
        ref_text=[r.ref_text for r in requests] if icl else None,
        x_vector_only_mode=[not icl] * len(requests),
        max_new_tokens=max_new_tokens,
    )


@torch.no_grad()
def decode_codes(tts: Any, codes: torch.Tensor, ref_code: torch.Tensor | None = None) -> tuple[np.ndarray, int]:
    """Codec frames -> float32 waveform; ICL outputs are decoded after their reference codes and cut, as qwen-tts does."""
    codec = tts.model.speech_tokenizer
    if codes.shape[0] == 0:
        return np.zeros(0, dtype=np.float32), int(codec.get_output_sample_rate())
    full = codes if ref_code is None else torch.cat([ref_code, codes], dim=0)
    with fast_masks(codec.model):
        wavs, sr = codec.decode([{"audio_codes": full.to(codec.device)}])
    wav = np.asarray(wavs[0], dtype=np.float32)
    if ref_code is not None:
        cut = int(ref_code.shape[0] / max(full.shape[0], 1) * wav.shape[0])
        wav = wav[cut:]
    return wav, int(sr)
