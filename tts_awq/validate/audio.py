"""Audio-level comparison: spectral distance on teacher-forced audio, speaker similarity on free-running audio.

* Teacher-forced audio: each model's argmax codes under teacher forcing (first codebook from the talker, 1-15
  from the code predictor fed the reference codes) are decoded with the codec. Both clips have the same length, so
  frames are compared one to one (no DTW): log-mel L1 (natural-log power mel, 80 bands) and a mel-cepstral
  distortion computed from the log-mel (cepstra 1..13 by DCT, ``10/ln10 * sqrt(2 * sum d^2)`` dB per frame).
* Speaker similarity: cosine similarity between the speaker embedding of each model's free-running output and of
  the voice prompt, with ONE judge for both: the reference model's own speaker encoder (and resemblyzer's GE2E
  encoder when it is installed). The gate uses the drop, reference minus package.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from tts_awq.qwen_tts import speaker_embedding

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000
N_MELS = 80
N_FFT = 1024
HOP = 256
N_CEPSTRA = 13
_FLOOR = 1e-5
_MIN_SECONDS = 0.5  # shorter clips are zero-padded before speaker embedding


def resample(wav: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return np.asarray(wav, dtype=np.float32)
    import librosa

    return librosa.resample(np.asarray(wav, dtype=np.float32), orig_sr=sr, target_sr=target).astype(np.float32)


@functools.cache
def _mel_filterbank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """[n_mels, n_fft/2+1] triangular filters on the Slaney mel scale (linear below 1 kHz, log above), each
    normalized to unit area (``librosa.filters.mel(norm="slaney", htk=False)``, fmin 0, fmax sr/2)."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep,
                        hz / f_sp)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)

    edges = mel_to_hz(np.linspace(0.0, float(hz_to_mel(np.array(sr / 2.0))), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    rising = (bins[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / np.diff(edges)[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def log_mel(wav: np.ndarray, sr: int) -> np.ndarray:
    """[frames, N_MELS] natural-log power mel spectrogram: centered STFT (zero-padded by N_FFT/2, periodic Hann
    window of N_FFT, hop HOP), power 2, Slaney mel filters: librosa's ``melspectrogram`` defaults, computed in
    numpy (librosa's feature module costs seconds of numba start-up per process)."""
    wav = resample(wav, sr, SAMPLE_RATE).astype(np.float64)
    if wav.size < N_FFT:
        wav = np.pad(wav, (0, N_FFT - wav.size))
    padded = np.pad(wav, (N_FFT // 2, N_FFT // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = power @ _mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS).T
    return np.log(np.maximum(mel, _FLOOR))


def mel_cepstra(logmel: np.ndarray) -> np.ndarray:
    from scipy.fft import dct

    amplitude_log = 0.5 * logmel  # log of the mel amplitude spectrum
    return dct(amplitude_log, type=2, norm="ortho", axis=-1)[:, 1 : N_CEPSTRA + 1]


def spectral_distance(wav_ref: np.ndarray, wav_test: np.ndarray, sr: int) -> dict[str, float | None]:
    a = log_mel(wav_ref, sr)
    b = log_mel(wav_test, sr)
    n = min(a.shape[0], b.shape[0])
    if n == 0:
        return {"log_mel_l1": None, "mcd_db": None}
    a, b = a[:n], b[:n]
    diff = mel_cepstra(a) - mel_cepstra(b)
    mcd = (10.0 / np.log(10.0)) * np.sqrt(2.0 * (diff**2).sum(-1))
    return {"log_mel_l1": float(np.abs(a - b).mean()), "mcd_db": float(mcd.mean())}


def _pad_min(wav: np.ndarray, sr: int) -> np.ndarray:
    need = int(_MIN_SECONDS * sr)
    return wav if wav.size >= need else np.pad(wav, (0, need - wav.size))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / den) if den > 0 else 0.0


class SpeakerJudge:
    """Speaker embeddings from the reference model's encoder (and resemblyzer, when importable)."""

    def __init__(self, reference_tts: Any, use_resemblyzer: bool = True) -> None:
        self.tts = reference_tts
        self.resemblyzer = None
        self.resemblyzer_note = "not installed"
        if use_resemblyzer:
            try:
                from resemblyzer import VoiceEncoder

                self.resemblyzer = VoiceEncoder("cpu", verbose=False)
                self.resemblyzer_note = "resemblyzer GE2E (16 kHz)"
            except Exception as exc:  # ImportError, or a broken optional dependency
                self.resemblyzer_note = f"not available ({exc.__class__.__name__})"

    def model_embedding(self, wav: np.ndarray, sr: int) -> np.ndarray:
        wav = _pad_min(resample(wav, sr, SAMPLE_RATE), SAMPLE_RATE)
        return speaker_embedding(self.tts, wav, SAMPLE_RATE)

    def resemblyzer_embedding(self, wav: np.ndarray, sr: int) -> np.ndarray | None:
        if self.resemblyzer is None:
            return None
        try:
            from resemblyzer import preprocess_wav

            clip = preprocess_wav(resample(wav, sr, 16000), source_sr=16000)
            if clip.size < 1600:
                return None
            return np.asarray(self.resemblyzer.embed_utterance(clip), dtype=np.float64)
        except Exception as exc:
            log.debug("resemblyzer failed: %s", exc)
            return None

    def embed(self, wav: np.ndarray, sr: int) -> dict[str, np.ndarray | None]:
        return {"model": self.model_embedding(wav, sr), "resemblyzer": self.resemblyzer_embedding(wav, sr)}

    @staticmethod
    def similarity(a: dict[str, np.ndarray | None], b: dict[str, np.ndarray | None]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for key in ("model", "resemblyzer"):
            x, y = a.get(key), b.get(key)
            out[key] = None if x is None or y is None else _cosine(x, y)
        return out


def summarize_speaker(entries: list[dict[str, Any]], note: str) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        values = [e[key] for e in entries if e.get(key) is not None]
        return float(np.mean(values)) if values else None

    ref, pkg = mean("sim_reference"), mean("sim_package")
    r_ref, r_pkg = mean("resemblyzer_sim_reference"), mean("resemblyzer_sim_package")
    return {
        "encoder": "reference model's own speaker encoder (extract_speaker_embedding), cosine similarity",
        "reference_mean": ref,
        "package_mean": pkg,
        "drop": None if ref is None or pkg is None else ref - pkg,
        "resemblyzer": {"note": note, "reference_mean": r_ref, "package_mean": r_pkg,
                        "drop": None if r_ref is None or r_pkg is None else r_ref - r_pkg},
    }


def summarize_spectral(entries: list[dict[str, Any]]) -> dict[str, Any]:
    l1 = [e["log_mel_l1"] for e in entries if e.get("log_mel_l1") is not None]
    mcd = [e["mcd_db"] for e in entries if e.get("mcd_db") is not None]
    return {
        "log_mel_l1_mean": float(np.mean(l1)) if l1 else None,
        "log_mel_l1_max": float(np.max(l1)) if l1 else None,
        "mcd_mean": float(np.mean(mcd)) if mcd else None,
        "mcd_max": float(np.max(mcd)) if mcd else None,
        "method": "frame-aligned (same codes length, no DTW); 80-band natural-log power mel; MCD from DCT cepstra 1-13",
    }
