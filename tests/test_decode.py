"""The batched talker decode loop (tts_awq.qwen_tts.decode) against qwen-tts's own nested ``generate`` calls.

The independent reference is qwen-tts itself: for the same seed and batch the "exact" engine must give
bit-identical codes and identical recorded talker rows, sampled with the default settings, with other sampling
settings and greedy, alone and batched (left padding, ICL and x-vector items, different languages, a runaway at
the limit). The "fast" engine (per-item draws, continuous batching) must match qwen-tts greedy, give each item
the same codes whatever the batch or slot count, and draw exactly from the categorical distribution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tts_awq.qwen_tts import VoiceClone, generate_voice_clone, load_tts_model
from tts_awq.qwen_tts.decode import FastDecode
from tts_awq.testing.tiny import reference_wav

TEXTS = [("Hello there, how are you today?", "english"),
         ("A much longer sentence that goes on and on about many different things.", "english"),
         ("Short.", "english"),
         ("Guten Tag, wie geht es Ihnen heute?", "german")]


@pytest.fixture(scope="module")
def tts(tiny_root: dict[str, Path], one_thread: Any) -> Any:
    return load_tts_model(tiny_root["tiny-tts-base"], "cpu", torch.float32)


@pytest.fixture(scope="module")
def tts64(tiny_root: dict[str, Path], one_thread: Any) -> Any:
    """Float64, where padding and batch shape change logits by ~1e-16 instead of ~1e-7: greedy paths of the tiny
    model then have no near-ties, so any difference between two schedules is a logic error, not rounding."""
    return load_tts_model(tiny_root["tiny-tts-base"], "cpu", torch.float64)


def _requests(seed: int = 11) -> list[VoiceClone]:
    clip = (reference_wav(seed=2), 24000)
    return [VoiceClone(text=t, lang=lang, ref_audio=clip, ref_text="Hi there.", icl=i % 2 == 1, seed=seed + i,
                       voice="v") for i, (t, lang) in enumerate(TEXTS)]


def _run(tts: Any, engine: str, batch_size: int, max_new_tokens: int, slots: int | None = None) -> list[Any]:
    reqs, out, cache = _requests(), [], {}
    for i in range(0, len(reqs), batch_size):
        out += generate_voice_clone(tts, reqs[i:i + batch_size], max_new_tokens, capture=True, prompt_cache=cache,
                                    engine=engine, slots=slots)
    return out


@pytest.mark.parametrize("batch_size", [1, 4])
def test_codes_and_rows_equal_qwen_tts_generate(tts: Any, batch_size: int) -> None:
    slow, fast = _run(tts, "qwen-tts", batch_size, 40), _run(tts, "exact", batch_size, 40)
    assert len(slow) == len(fast) == len(TEXTS)
    for a, b in zip(slow, fast, strict=True):
        assert a.codes.shape[1] == 16 and a.frames >= 2
        assert torch.equal(a.codes, b.codes)
        assert a.stopped == b.stopped
        assert a.prefill == b.prefill > 0
        assert a.rows.shape == b.rows.shape == (a.prefill + a.frames, a.rows.shape[1])
        assert torch.equal(a.rows, b.rows)
    # the case is not trivial: a batch mixes stopped items and runaways, and frames differ between items
    assert len({r.frames for r in fast}) > 1
    if batch_size == 4:
        assert {r.stopped for r in fast} == {True, False}


def _model_generate(tts: Any, fast: bool, seed: int, n: int = 2, decoder: FastDecode | None = None,
                    only: int | None = None, **sampling: Any) -> list[torch.Tensor]:
    """qwen-tts's model-level generate on ``n`` x-vector prompts of different lengths (or on prompt ``only``
    alone), with explicit sampling."""
    reqs = _requests()[:n] if only is None else [_requests()[only]]
    items = []
    for r in reqs:
        items += tts.create_voice_clone_prompt(ref_audio=r.ref_audio, ref_text=r.ref_text, x_vector_only_mode=True)
    prompt = tts._prompt_items_to_voice_clone_prompt(items)
    input_ids = tts._tokenize_texts([tts._build_assistant_text(r.text) for r in reqs])
    torch.manual_seed(seed)
    context = (decoder or FastDecode(tts.model.talker)) if fast else torch.no_grad()
    with context, torch.no_grad():
        codes, _ = tts.model.generate(input_ids=input_ids, voice_clone_prompt=prompt,
                                      languages=[r.lang for r in reqs], max_new_tokens=24, **sampling)
    return codes


@pytest.mark.parametrize("sampling", [
    {"do_sample": False, "subtalker_dosample": False, "repetition_penalty": 1.3},
    {"temperature": 1.3, "top_k": 7, "top_p": 0.8, "subtalker_temperature": 0.5, "subtalker_top_k": 0,
     "subtalker_top_p": 0.6, "repetition_penalty": 1.0},
], ids=["greedy", "other-sampling"])
def test_other_sampling_settings_match(tts: Any, sampling: dict[str, Any]) -> None:
    slow = _model_generate(tts, False, 5, **sampling)
    fast = _model_generate(tts, True, 5, **sampling)
    for a, b in zip(slow, fast, strict=True):
        assert torch.equal(a, b)
    # and the settings matter: the default sampling gives other codes
    default = _model_generate(tts, True, 5)
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(fast, default, strict=True))


def test_generate_is_restored_and_unknown_options_are_refused(tts: Any) -> None:
    talker = tts.model.talker
    bound = talker.generate
    with pytest.raises(RuntimeError, match="boom"), FastDecode(talker) as fast:
        assert talker.generate == fast.decode
        raise RuntimeError("boom")
    assert talker.generate == bound and "generate" not in vars(talker)
    with pytest.raises(TypeError, match="num_beams"):
        FastDecode(talker).decode(num_beams=4, inputs_embeds=None)


def test_unknown_engine_is_refused(tts: Any) -> None:
    with pytest.raises(ValueError, match="engine"):
        generate_voice_clone(tts, _requests()[:1], 8, engine="vllm")


@pytest.mark.parametrize("slots", [1, 2, None])
def test_fast_engine_greedy_equals_qwen_tts(tts64: Any, slots: int | None) -> None:
    """Greedy decoding removes the random stream: the fast loop's unpadded prefills, slot refills, cache merges
    (a longer item joining shorter ones and the reverse) and per-row positions must reproduce qwen-tts, in its
    padded batch and on each prompt alone (float64: in float32 a near-tie of the code predictor flips at frame 2
    of one prompt between qwen-tts's own padded batch and its single run)."""
    greedy = {"do_sample": False, "subtalker_dosample": False}
    slow = [_model_generate(tts64, False, 5, only=i, **greedy)[0] for i in range(4)]
    batch = _model_generate(tts64, False, 5, n=4, **greedy)
    fast = _model_generate(tts64, True, 5, n=4, decoder=FastDecode(tts64.model.talker, [1, 2, 3, 4], slots=slots),
                           **greedy)
    for a, b in zip(slow, batch, strict=True):
        assert torch.equal(a, b)
    assert len({c.shape[0] for c in slow}) > 1
    for a, b in zip(slow, fast, strict=True):
        assert torch.equal(a, b)


def test_fast_engine_codes_do_not_depend_on_the_batch(tts: Any) -> None:
    alone = _run(tts, "fast", 1, 40)
    for batch_size, slots in ((4, None), (4, 2), (3, 1)):
        together = _run(tts, "fast", batch_size, 40, slots=slots)
        for a, b in zip(alone, together, strict=True):
            assert torch.equal(a.codes, b.codes) and a.stopped == b.stopped
            assert torch.equal(a.rows, b.rows) and a.prefill == b.prefill
    assert {r.stopped for r in alone} == {True, False}  # a runaway shares the batch with items that stop
    assert all(r.frames == 40 for r in alone if not r.stopped)
    exact = _run(tts, "exact", 1, 40)
    assert any(not torch.equal(a.codes[:2], b.codes[:2]) for a, b in zip(alone, exact, strict=True))  # other draws


def test_race_draws_from_the_categorical_distribution() -> None:
    """The exponential race against the probabilities it was given (chi-square), row independence, seeding."""
    from scipy.stats import chisquare

    from tts_awq.qwen_tts.decode import _race

    probs = torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    rows = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]
    draws = torch.stack([_race(probs, rows) for _ in range(4000)])
    counts = torch.bincount(draws[:, 0], minlength=6)[:5].numpy()
    assert chisquare(counts, 4000 * probs[0, :5].numpy()).pvalue > 1e-3
    assert int(torch.bincount(draws[:, 0], minlength=6)[5]) == 0 and bool((draws[:, 1] == 5).all())
    # row 0 alone, with the same generator seed, draws the same tokens: rows do not share a stream
    alone = torch.stack([_race(probs[:1], [g]) for g in [torch.Generator().manual_seed(7)] for _ in range(4000)])
    assert torch.equal(alone[:, 0], draws[:, 0])


@pytest.mark.parametrize("icl", [False, True])
def test_calibration_rows_equal_the_talker_capture_hook(tts: Any, icl: bool) -> None:
    """Calibration (quantize/calibration.py) records rows with the exact FastDecode inside qwen-tts's end-to-end
    generate_voice_clone; the reference is the TalkerCapture hook on qwen-tts's own decode of the same call."""
    from tts_awq.qwen_tts import TalkerCapture, eos_id, synthesize

    reqs = [VoiceClone(text=t, lang=lang, ref_audio=(reference_wav(seed=2), 24000), ref_text="Hi there.", icl=icl,
                       seed=5) for t, lang in TEXTS]
    capture = TalkerCapture(tts.model.talker, eos_id(tts), 40)
    try:
        synthesize(tts, reqs, 40)
    finally:
        capture.close()
    with FastDecode(tts.model.talker, record_rows=True) as decoder:
        synthesize(tts, reqs, 40)
    slow, fast = capture.sequences(), [rows[:40] for rows in decoder.rows]
    assert len(slow) == len(fast) == len(reqs) and capture.position_mismatches == 0
    for a, b in zip(slow, fast, strict=True):
        assert torch.equal(a, b)
