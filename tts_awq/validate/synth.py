"""Generations of evaluation jobs (prompt x seed, with a voice and a clone mode).

With the "fast" engine a job's codes depend only on the job (its own generator, its own unpadded prefill), not
on the jobs decoded beside it; with "exact" / "qwen-tts" a group of jobs is one padded batch drawn from one
generator (see :mod:`tts_awq.qwen_tts.decode`). Prompts alternate between x-vector-only and ICL voice
cloning like the calibration does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tts_awq.qwen_tts import VoiceClone, VoiceCloneResult, generate_voice_clone
from tts_awq.validate.plan import Job

FRAME_RATE_HZ = 12.5


#: One generation: codes, whether it stopped, and (reference side) the captured talker rows.
Generation = VoiceCloneResult


def generate_jobs(tts: Any, jobs: list[Job], voice_audio: dict[str, tuple[np.ndarray, int]], max_new_tokens: int,
                  capture: bool = False, prompt_cache: dict[Any, Any] | None = None,
                  engine: str = "fast", slots: int | None = None) -> list[Generation]:
    """Generate ``jobs`` as one batch (seeded with the first job's seed); ``voice_audio`` maps voice name -> clip."""
    requests = [VoiceClone(text=j.prompt.text, lang=j.prompt.lang, ref_audio=voice_audio[j.voice.name],
                           ref_text=j.voice.ref_text, icl=j.icl, seed=j.seed, voice=j.voice.name) for j in jobs]
    return generate_voice_clone(tts, requests, max_new_tokens, capture=capture, prompt_cache=prompt_cache,
                                engine=engine, slots=slots if engine == "fast" else None)

