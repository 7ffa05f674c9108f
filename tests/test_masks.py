"""Broadcast SDPA masks: the same boolean masks as transformers' vmap builder, and the same audio from the codec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers.masking_utils import (
    and_masks,
    causal_mask_function,
    chunked_causal_mask_function,
    packed_sequence_mask_function,
    sdpa_mask,
    sliding_window_causal_mask_function,
)

from tts_awq.qwen_tts import decode_codes, load_tts_model
from tts_awq.qwen_tts.masks import FAST_SDPA, broadcast_sdpa_mask, fast_masks


def _padding(batch: int, length: int, left: list[int]) -> torch.Tensor:
    mask = torch.ones((batch, length), dtype=torch.bool)
    for row, pad in enumerate(left):
        mask[row, :pad] = False
    return mask


CASES = {
    "prefill, no padding (is_causal skip)": dict(batch_size=2, cache_position=torch.arange(6), kv_length=6),
    "prefill, left padding": dict(batch_size=3, cache_position=torch.arange(7), kv_length=7,
                                  attention_mask=_padding(3, 7, [0, 2, 5])),
    "decode step, left padding": dict(batch_size=3, cache_position=torch.tensor([9]), kv_length=10,
                                      attention_mask=_padding(3, 10, [4, 0, 1])),
    "decode step, no padding (skip)": dict(batch_size=2, cache_position=torch.tensor([4]), kv_length=5,
                                           attention_mask=torch.ones((2, 5), dtype=torch.bool)),
    "chunk after a cache, short 2D mask padded": dict(batch_size=2, cache_position=torch.arange(5, 8), kv_length=8,
                                                      attention_mask=_padding(2, 6, [0, 3])),
    "kv offset": dict(batch_size=1, cache_position=torch.arange(12, 15), kv_length=6, kv_offset=9,
                      attention_mask=_padding(1, 15, [10])),
    "no skip allowed": dict(batch_size=2, cache_position=torch.arange(5), kv_length=5, allow_is_causal_skip=False),
    "sliding window": dict(batch_size=2, cache_position=torch.arange(9), kv_length=9, local_size=3,
                           mask_function=sliding_window_causal_mask_function(3)),
    "sliding window shorter than the window (skip)": dict(batch_size=1, cache_position=torch.arange(4), kv_length=4,
                                                          local_size=8,
                                                          mask_function=sliding_window_causal_mask_function(8)),
    "packed sequences (the codec's path)": dict(
        batch_size=1, cache_position=torch.arange(8), kv_length=8, allow_is_causal_skip=False,
        mask_function=and_masks(causal_mask_function,
                                packed_sequence_mask_function(torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2]])))),
    "chunked, left padded": dict(batch_size=2, cache_position=torch.arange(7), kv_length=7,
                                 attention_mask=_padding(2, 7, [0, 2]), allow_is_causal_skip=False,
                                 mask_function=chunked_causal_mask_function(3, torch.tensor([0, 2]))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broadcast_mask_equals_transformers_sdpa_mask(case: str) -> None:
    kwargs = CASES[case]
    expected = sdpa_mask(**kwargs)
    got = broadcast_sdpa_mask(**kwargs)
    if expected is None:
        assert got is None
        return
    assert got is not None and got.dtype == torch.bool and got.shape == expected.shape
    assert torch.equal(got, expected)
    assert not got.all() and got.any()  # a real pattern, not a trivial all-True / all-False mask


def test_fast_masks_switches_and_restores_the_attention_implementation(tiny_root: dict[str, Path]) -> None:
    tts = load_tts_model(tiny_root["tiny-darwin"], "cpu", torch.float32)
    configs = [tts.model.talker.config, tts.model.talker.code_predictor.config,
               tts.model.speech_tokenizer.model.config.decoder_config]
    with fast_masks(tts.model.talker, tts.model.speech_tokenizer.model):
        with fast_masks(tts.model.talker):  # nested: the inner block leaves the outer's choice alone
            pass
        assert [c._attn_implementation for c in configs] == [FAST_SDPA] * 3
    assert [c._attn_implementation for c in configs] == ["sdpa"] * 3
    with pytest.raises(RuntimeError), fast_masks(tts.model.talker):
        raise RuntimeError("restored on errors too")
    assert tts.model.talker.config._attn_implementation == "sdpa"


def test_codec_audio_equals_qwen_tts_decode(tiny_root: dict[str, Path], one_thread: Any) -> None:
    """decode_codes runs the codec under broadcast masks; the waveform must equal the codec's own decode."""
    tts = load_tts_model(tiny_root["tiny-darwin"], "cpu", torch.float32)
    codec = tts.model.speech_tokenizer
    quantizers = codec.model.config.decoder_config.num_quantizers
    codes = torch.randint(0, 1024, (90, quantizers), generator=torch.Generator().manual_seed(3))
    wav, sr = decode_codes(tts, codes)
    expected, expected_sr = codec.decode([{"audio_codes": codes}])
    assert sr == expected_sr and wav.shape[0] > 1000
    assert torch.equal(torch.from_numpy(wav), torch.as_tensor(expected[0], dtype=torch.float32))
