"""The numpy log-mel against librosa's melspectrogram (the independent reference it replaces)."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from tts_awq.validate import audio


def _librosa_log_mel(wav: np.ndarray) -> np.ndarray:
    if wav.size < audio.N_FFT:
        wav = np.pad(wav, (0, audio.N_FFT - wav.size))
    mel = librosa.feature.melspectrogram(y=wav, sr=audio.SAMPLE_RATE, n_fft=audio.N_FFT, hop_length=audio.HOP,
                                         n_mels=audio.N_MELS, fmin=0.0, fmax=audio.SAMPLE_RATE / 2, power=2.0)
    return np.log(np.maximum(mel, 1e-5)).T


def _clips() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(2 * audio.SAMPLE_RATE) / audio.SAMPLE_RATE
    chirp = 0.4 * np.sin(2 * np.pi * (100 + 2000 * t) * t)
    return {"noise": 0.1 * rng.standard_normal(30000), "chirp": chirp, "shorter than a window": 0.01 * rng.standard_normal(500),
            "silence": np.zeros(4000)}


@pytest.mark.parametrize("name", list(_clips()))
def test_log_mel_equals_librosa(name: str) -> None:
    wav = _clips()[name].astype(np.float32)
    ours, reference = audio.log_mel(wav, audio.SAMPLE_RATE), _librosa_log_mel(wav)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 1e-4  # librosa computes in float32, this in float64


def test_mel_filterbank_equals_librosa() -> None:
    ours = audio._mel_filterbank(audio.SAMPLE_RATE, audio.N_FFT, audio.N_MELS)
    reference = librosa.filters.mel(sr=audio.SAMPLE_RATE, n_fft=audio.N_FFT, n_mels=audio.N_MELS, fmin=0.0,
                                    fmax=audio.SAMPLE_RATE / 2)
    assert ours.shape == reference.shape == (audio.N_MELS, audio.N_FFT // 2 + 1)
    assert np.abs(ours - reference).max() < 1e-7 * np.abs(reference).max() * 100


def test_spectral_distance_is_zero_for_equal_clips_and_grows_with_noise() -> None:
    rng = np.random.default_rng(1)
    clip = _clips()["chirp"].astype(np.float32)
    assert audio.spectral_distance(clip, clip, audio.SAMPLE_RATE) == {"log_mel_l1": 0.0, "mcd_db": 0.0}
    small = audio.spectral_distance(clip, clip + 0.01 * rng.standard_normal(clip.size), audio.SAMPLE_RATE)
    large = audio.spectral_distance(clip, clip + 0.1 * rng.standard_normal(clip.size), audio.SAMPLE_RATE)
    assert 0 < small["log_mel_l1"] < large["log_mel_l1"] and 0 < small["mcd_db"] < large["mcd_db"]
