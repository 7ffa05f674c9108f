"""Voice-clone generation with a fixed seed, one prompt at a time, returning the codec frames.

Every generation runs alone (batch 1, so no padding changes the numbers) right after ``torch.manual_seed``.
Prompts alternate between x-vector-only and ICL voice cloning like the calibration does. Generation asks for
``max_new_tokens + 1`` talker tokens: a sequence "stopped" when its first EOS came within ``max_new_tokens``
tokens (at most ``max_new_tokens - 1`` audio frames); otherwise it ran to the limit (a runaway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tts_awq.prompts import Prompt, VoiceClip
from tts_awq.quantize.calibration import _TalkerCapture

FRAME_RATE_HZ = 12.5


@dataclass(frozen=True)
class Job:
    """One (prompt, seed) generation: which voice, which clone mode."""

    prompt: Prompt
    index: int  # position of the prompt in the evaluation list
    seed: int
    voice: VoiceClip
    icl: bool

    @property
    def key(self) -> str:
        return f"{self.prompt.id}#s{self.seed}"


@dataclass
class Generation:
    codes: torch.Tensor  # [frames, num_code_groups] long, CPU
    stopped: bool  # EOS within max_new_tokens
    rows: torch.Tensor | None = None  # talker inputs_embeds rows [prefill + decode, hidden] (reference only)
    prefill: int = 0  # number of prefill rows
    ref_code: torch.Tensor | None = None  # ICL reference codes (decoded in front of the output, then cut)

    @property
    def frames(self) -> int:
        return int(self.codes.shape[0])


def language_for(tts: Any, prompt: Prompt) -> str:
    supported = {s.lower() for s in (tts.model.get_supported_languages() or [])}
    lang = prompt.lang.lower()
    return lang if lang in supported else "auto"


def eos_id(tts: Any) -> int:
    return int(tts.model.config.talker_config.codec_eos_token_id)


def allowed_ids(tts: Any) -> list[int]:
    """The ids generation can emit: codes 0..vocab-1025 plus EOS (qwen-tts suppresses the other 1023)."""
    cfg = tts.model.config.talker_config
    vocab = int(cfg.vocab_size)
    eos = int(cfg.codec_eos_token_id)
    return [i for i in range(vocab) if i < vocab - 1024 or i == eos]


@torch.no_grad()
def generate(tts: Any, job: Job, voice_audio: tuple[np.ndarray, int], max_new_tokens: int,
             capture: bool = False) -> Generation:
    """Run one voice-clone generation with ``job.seed``; optionally record the talker input rows."""
    torch.manual_seed(job.seed)
    items = tts.create_voice_clone_prompt(ref_audio=voice_audio, ref_text=job.voice.ref_text,
                                          x_vector_only_mode=not job.icl)
    prompt_dict = tts._prompt_items_to_voice_clone_prompt(items)
    input_ids = tts._tokenize_texts([tts._build_assistant_text(job.prompt.text)])
    ref_ids = [tts._tokenize_texts([tts._build_ref_text(job.voice.ref_text)])[0]] if job.icl else None
    kwargs = tts._merge_generate_kwargs(max_new_tokens=max_new_tokens + 1)
    talker = tts.model.talker
    hook = _TalkerCapture(talker, eos_id(tts), 10**9) if capture else None
    torch.manual_seed(job.seed)
    try:
        codes_list, _ = tts.model.generate(input_ids=input_ids, ref_ids=ref_ids, voice_clone_prompt=prompt_dict,
                                           languages=[language_for(tts, job.prompt)], **kwargs)
    finally:
        if hook is not None:
            hook.close()
    codes = codes_list[0].detach().to("cpu", torch.long)
    rows = prefill = None
    if hook is not None:
        rows = hook.sequences()[0]
        prefill = int(hook.rows[0][0].shape[0])
    ref_code = prompt_dict["ref_code"][0]
    return Generation(codes=codes, stopped=codes.shape[0] < max_new_tokens, rows=rows, prefill=prefill or 0,
                      ref_code=None if ref_code is None else ref_code.detach().to("cpu", torch.long))


@torch.no_grad()
def decode(tts: Any, codes: torch.Tensor, ref_code: torch.Tensor | None = None) -> tuple[np.ndarray, int]:
    """Codec frames -> float32 waveform; ICL outputs are decoded after their reference codes and cut, as qwen-tts does."""
    if codes.shape[0] == 0:
        return np.zeros(0, dtype=np.float32), int(tts.model.speech_tokenizer.get_output_sample_rate())
    device = tts.model.speech_tokenizer.device
    full = codes if ref_code is None else torch.cat([ref_code, codes], dim=0)
    wavs, sr = tts.model.speech_tokenizer.decode([{"audio_codes": full.to(device)}])
    wav = np.asarray(wavs[0], dtype=np.float32)
    if ref_code is not None:
        cut = int(ref_code.shape[0] / max(full.shape[0], 1) * wav.shape[0])
        wav = wav[cut:]
    return wav, int(sr)
