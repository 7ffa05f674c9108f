"""tts-awq speak on the tiny checkpoint: one WAV per line with its manifest entry, per-line voice/lang/seed, the
runaway guard (a forced runaway resampled, a damaged model flagged and counted), package and dense checkpoint,
atomic output and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from tts_awq.cli import main
from tts_awq.testing.damage import edit_weights, scale_eos_row

VOICES = Path(__file__).resolve().parent.parent / "calib_data" / "voices"
REF_TEXT = "The morning train was late again, so I walked to work."
SMALL = ["--device", "cpu", "--max-new-tokens", "40", "--batch-size", "2"]

pytestmark = pytest.mark.usefixtures("one_thread")


def speak(model: Path, out: Path, *args: str) -> int:
    return main(["speak", str(model), "--out", str(out), *SMALL, *args])


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_script_lines_become_wavs_with_a_manifest(tiny_stops: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "script.jsonl"
    lines = [{"text": "Good morning, everyone.", "id": "intro"},
             {"text": "Guten Morgen zusammen.", "lang": "de", "voice": str(VOICES / "de_male.wav"), "seed": 7},
             {"text": "A third line without anything else."}]
    script.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert speak(tiny_stops, tmp_path / "out", "--script", str(script), "--ref-audio", str(VOICES / "en_male.wav"),
                 "--ref-text", REF_TEXT) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "out")
    assert "speak: 3 lines" in captured.err and "0 still over budget" in captured.err
    entries = manifest(tmp_path / "out")
    assert [e["file"] for e in entries] == ["intro.wav", "line-00002.wav", "line-00003.wav"]
    assert [e["seed"] for e in entries] == [1729, 7, 1731] and entries[1]["lang"] == "german"
    assert entries[0]["voice"] == entries[2]["voice"] != entries[1]["voice"]
    for e in entries:
        assert set(e) >= {"file", "text", "seconds", "frames", "seed", "tries", "stopped"}
        wav, sr = sf.read(str(tmp_path / "out" / e["file"]))
        assert sr == 24000 and e["stopped"] and e["tries"] == 1 and 2 <= e["frames"] < e["budget"]
        assert len(wav) == e["frames"] * 1920  # 12.5 frames/s at 24 kHz
        assert e["seconds"] == round(e["frames"] / 12.5, 3)
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["stage"] == "speak" and prov["lines"] == 3 and prov["options"]["budget"]["frames_per_unit"] == 2.5


def test_text_line_with_a_package_and_its_dense_checkpoint(tiny_stops: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The same --text and seed through an (unvalidated: warned) INT4 package and its BF16/FP32 source."""
    from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker

    pkg = quantize_talker(QuantizeOptions(src=str(tiny_stops), out=tmp_path / "awq", n_samples=2, seq_len=24,
                                          calib_batch_size=2, device="cpu", progress=False))
    caplog.set_level("INFO", logger="tts_awq")
    for model, out in ((pkg, "int4"), (tiny_stops, "dense")):
        assert speak(model, tmp_path / out, "--text", "Hello there.", "--ref-audio", str(VOICES / "en_female.wav")) == 0
        (entry,) = manifest(tmp_path / out)
        assert entry["file"] == "line-00001.wav" and entry["text"] == "Hello there." and entry["seed"] == 1729
    assert "NOT VALIDATED" in caplog.text
    kinds = [json.loads((tmp_path / o / "provenance.json").read_text())["model"]["kind"] for o in ("int4", "dense")]
    assert kinds == ["tts-awq INT4 package", "dense checkpoint"]


def test_a_forced_runaway_is_resampled_and_reported(tiny_stops: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """EOS suppressed at the codec head for the first try only: every line runs into its budget, is resampled
    with seed + 1 and stops; the summary counts the resamples."""
    from tts_awq import guard
    from tts_awq.qwen_tts import eos_id

    real = guard.generate_voice_clone
    calls: list[list[int]] = []

    def first_try_never_stops(tts: Any, requests: list[Any], *args: Any, **kw: Any) -> Any:
        calls.append([r.seed for r in requests])
        if len(calls) > 1:
            return real(tts, requests, *args, **kw)
        handle = tts.model.talker.codec_head.register_forward_hook(
            lambda _m, _i, out: out.index_fill(-1, torch.tensor([eos_id(tts)]), float("-inf")))
        try:
            return real(tts, requests, *args, **kw)
        finally:
            handle.remove()

    monkeypatch.setattr(guard, "generate_voice_clone", first_try_never_stops)
    script = tmp_path / "script.txt"
    script.write_text("First line.\nSecond line here.\n")
    assert speak(tiny_stops, tmp_path / "out", "--script", str(script), "--ref-audio", str(VOICES / "en_male.wav")) == 0
    assert calls == [[1729, 1730], [1730, 1731]]
    entries = manifest(tmp_path / "out")
    assert [(e["tries"], e["stopped"], e["seed"]) for e in entries] == [(2, True, 1730), (2, True, 1731)]
    err = capsys.readouterr().err
    assert "2 resampled after a runaway, 0 still over budget" in err
    assert caplog.text.count("stopped after 2 tries") == 2


def test_a_damaged_model_is_flagged_after_every_retry(tiny_stops: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    damaged = shutil.copytree(tiny_stops, tmp_path / "no-eos")
    edit_weights(damaged, scale_eos_row(0.0))
    assert speak(damaged, tmp_path / "out", "--text", "Short.", "--ref-audio", str(VOICES / "en_male.wav"),
                 "--retries", "1") == 0
    (entry,) = manifest(tmp_path / "out")
    budget = min(40, int(np.ceil(2.5 * len("Short.") + 25)))
    assert entry["budget"] == budget and entry["frames"] == budget
    assert entry["tries"] == 2 and entry["stopped"] is False and entry["seed"] == 1730
    err = capsys.readouterr().err
    assert "1 still over budget after --retries" in err and "STILL RAN PAST ITS BUDGET" in caplog.text


def test_frame_budget_rule() -> None:
    from tts_awq.guard import frame_budget

    assert frame_budget("The morning train was late again, so I walked to work.", 2048) == 160  # 54 chars
    assert frame_budget("你好", 2048) == int(np.ceil(2.5 * 6 + 25))  # CJK counts 3 units per character
    assert frame_budget("x" * 10_000, 2048) == 2048 and frame_budget("", 2) == 3


def test_errors_are_one_line_and_leave_no_output(tiny_stops: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert speak(tiny_stops, tmp_path / "out", "--text", "Hi.") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no voice" in err and "(or pass --ref-audio)" in err
    assert not (tmp_path / "out").exists()
    script = tmp_path / "s.csv"
    script.write_text("words\nhello\n")
    assert speak(tiny_stops, tmp_path / "out", "--script", str(script), "--ref-audio", str(VOICES / "en_male.wav")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no 'text' column" in err and not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    assert speak(tiny_stops, tmp_path / "taken", "--text", "Hi.", "--ref-audio", str(VOICES / "en_male.wav")) == 2
    assert "already exists" in capsys.readouterr().err
