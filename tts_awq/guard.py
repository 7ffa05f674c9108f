"""The runaway guard of ``teacher`` and ``speak``: a frame budget per line from its text, and resampling.

Rule: a line may use ``budget = min(ceil(FRAMES_PER_UNIT * units + FRAMES_SLACK), max_new_tokens)`` codec frames
(12.5 frames/s), ``units`` = its characters with CJK ideographs, kana and Hangul counted ``WIDE_UNITS`` each (one
such character is about one syllable, roughly three Latin letters). A generation that has not emitted EOS within
its budget is a runaway: it is resampled with the next seed (``seed + 1``, ...) up to ``retries`` times; a line
that still runs away is returned with ``stopped=False`` and its codes cut at the budget, never passed off as
finished.

Calibration: the reference speech measurable here (calib_data/voices: 4 clips, English/German/French, 41-57
characters in 2.7-3.6 s) runs at 14.7-19.7 characters/s, i.e. 0.63-0.85 frames per character; natural read
speech is typically 12-16 characters/s (~1 frame per character). ``FRAMES_PER_UNIT = 2.5`` therefore allows
speech 2.5-4x slower than measured (5 characters/s) before calling it a runaway, and ``FRAMES_SLACK = 25`` frames
(2 s) covers leading/trailing silence of short lines; a 54-character sentence gets 160 frames (12.8 s) for a
3.6 s reading, far below the runaways reported for Qwen3-TTS blends (655 s for a 3 s sentence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from tts_awq.qwen_tts import VoiceClone, VoiceCloneResult, generate_voice_clone

FRAMES_PER_UNIT = 2.5
FRAMES_SLACK = 25
WIDE_UNITS = 3
#: qwen-tts generates at least two frames (min_new_tokens=2): a budget below 3 could never be met.
MIN_BUDGET = 3


def _wide(char: str) -> bool:
    code = ord(char)
    return (0x3040 <= code <= 0x30FF or 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF
            or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFAFF)


def text_units(text: str) -> int:
    return sum(WIDE_UNITS if _wide(c) else 1 for c in text.strip())


def frame_budget(text: str, max_new_tokens: int) -> int:
    """The most codec frames ``text`` may take before it counts as a runaway (see the module docstring)."""
    return max(MIN_BUDGET, min(math.ceil(FRAMES_PER_UNIT * text_units(text) + FRAMES_SLACK), max_new_tokens))


def budget_rule(max_new_tokens: int) -> dict[str, Any]:
    """The rule as recorded in manifests and provenance."""
    return {"frames_per_unit": FRAMES_PER_UNIT, "slack_frames": FRAMES_SLACK, "wide_char_units": WIDE_UNITS,
            "max_new_tokens": max_new_tokens,
            "rule": "frames <= min(ceil(frames_per_unit * units + slack_frames), max_new_tokens); units = characters, "
                    "CJK/kana/Hangul counted wide_char_units each"}


@dataclass
class Guarded:
    """The generation kept for one request: its result, the seed that produced it and how many tries it took."""

    result: VoiceCloneResult
    seed: int
    tries: int
    budget: int

    @property
    def stopped(self) -> bool:
        return self.result.stopped


def _within(result: VoiceCloneResult, budget: int) -> VoiceCloneResult:
    """``result`` judged against ``budget``: a line with ``frames >= budget`` is a runaway, cut to ``budget``
    frames (and rows), so it does not depend on the batch's longer budgets."""
    if result.stopped and result.frames < budget:
        return result
    rows = None if result.rows is None else result.rows[: result.prefill + budget]
    return replace(result, codes=result.codes[:budget], stopped=False, rows=rows)


def generate_guarded(tts: Any, requests: list[VoiceClone], budgets: list[int], retries: int, capture: bool = False,
                     prompt_cache: dict[Any, Any] | None = None, slots: int | None = None) -> list[Guarded]:
    """Generate ``requests`` with the fast engine (per-item draws: a line's codes do not depend on its batch); each
    line that exceeds its budget is generated again with the next seed, up to ``retries`` times."""
    kept: list[Guarded | None] = [None] * len(requests)
    pending = list(range(len(requests)))
    for attempt in range(retries + 1):
        tries = [replace(requests[i], seed=requests[i].seed + attempt) for i in pending]
        results = generate_voice_clone(tts, tries, max(budgets[i] for i in pending), capture=capture,
                                       prompt_cache=prompt_cache, engine="fast", slots=slots)
        again = []
        for i, req, result in zip(pending, tries, results, strict=True):
            judged = _within(result, budgets[i])
            kept[i] = Guarded(result=judged, seed=req.seed, tries=attempt + 1, budget=budgets[i])
            if not judged.stopped:
                again.append(i)
        pending = again
        if not pending:
            break
    return [g for g in kept if g is not None]
