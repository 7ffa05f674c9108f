"""``speak``: script lines -> guarded, batched generation -> one WAV each, ``manifest.jsonl`` and a summary.

The script is ``--text`` (one line) or a file read like teacher's data (:mod:`tts_awq.teacher.rows`): a text file
(one line per line), CSV, JSONL or parquet with ``text`` and optional ``lang``, ``voice``/``ref_audio``,
``ref_text``, ``seed``, ``id``. ``--ref-audio``/``--ref-text`` give the voice of lines without one. Works with a
tts-awq package or a dense (BF16) checkpoint, so both can be compared line by line with the same seeds. OUT is
written atomically (temp dir + rename).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tts_awq.checkpoint.atomic import atomic_output_dir
from tts_awq.constants import DEFAULT_SEED
from tts_awq.errors import UserError
from tts_awq.guard import budget_rule, frame_budget, generate_guarded
from tts_awq.qwen_tts import VoiceClone, decode_codes, resolve_device
from tts_awq.teacher.card import write_provenance
from tts_awq.teacher.columns import FRAME_RATE_HZ
from tts_awq.teacher.rows import Row, Table, read_table
from tts_awq.teacher.status import teacher_record
from tts_awq.validate.models import load_side, resolve_reference
from tts_awq.validate.plan import REFILL_GROUPS  # slots refilled from this many batches

log = logging.getLogger(__name__)

STAGE = "speak"


@dataclass(frozen=True)
class SpeakOptions:
    model: str
    out: Path
    text: str | None = None
    script: str | None = None
    ref_audio: str | None = None
    ref_text: str = ""
    lang: str | None = None
    seed: int = DEFAULT_SEED
    retries: int = 2
    max_new_tokens: int = 2048
    batch_size: int = 8
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True


@dataclass(frozen=True)
class SpeakResult:
    out: Path
    lines: int
    seconds: float
    resampled: int  # lines that needed more than one try
    runaways: int  # lines still over budget after every retry (kept, flagged stopped=false)


def _script(opts: SpeakOptions, work: Path) -> Table:
    if (opts.text is None) == (opts.script is None):
        raise UserError("speak: pass exactly one of --text TEXT or --script FILE")
    if opts.script is not None:
        source = opts.script
    else:
        source = str(work / "line.jsonl")
        Path(source).write_text(json.dumps({"text": opts.text}, ensure_ascii=False) + "\n", encoding="utf-8")
    voice = str(Path(opts.ref_audio).expanduser().absolute()) if opts.ref_audio else None
    table = read_table(source, opts.seed, default_voice=voice, default_ref_text=opts.ref_text, allow_codes=False,
                       voice_hint="--ref-audio")
    if opts.text is not None:
        table.source.update(source="--text", text=opts.text)
        Path(source).unlink()
    if opts.lang:
        from dataclasses import replace

        from tts_awq.prompts import normalize_lang

        table = Table([r if r.lang != "auto" else replace(r, lang=normalize_lang(opts.lang)) for r in table.rows],
                      table.source)
    return table


def _file_name(row: Row, used: set[str]) -> str:
    given = row.id != f"row-{row.index:06d}"  # the script named it (teacher.rows' default id otherwise)
    stem = (re.sub(r"[^\w.-]+", "_", row.id).strip("._") if given else "") or f"line-{row.index + 1:05d}"
    name, n = f"{stem}.wav", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}.wav"
    used.add(name)
    return name


def speak(opts: SpeakOptions) -> SpeakResult:
    """Synthesize every line of the script into ``opts.out`` (see the module docstring)."""
    import soundfile as sf
    from tqdm.auto import tqdm

    side = resolve_reference(opts.model)
    model = teacher_record(side, allow_unvalidated=True, command="speaker")
    if side.quantized and not model["validation"]["status"] == "passed":
        log.warning("speak: %s is %s", side.root, model["validation"]["status"])
    device = resolve_device(opts.device)
    with atomic_output_dir(opts.out, overwrite=opts.overwrite, sources=(side.root,), stage=STAGE) as tmp:
        table = _script(opts, tmp)
        tts = load_side(side, device).tts
        cache: dict[Any, Any] = {}
        entries: list[dict[str, Any]] = []
        used: set[str] = set()
        group = opts.batch_size * REFILL_GROUPS
        with tqdm(total=len(table.rows), desc="speak lines", unit="line", disable=not opts.progress) as bar:
            for start in range(0, len(table.rows), group):
                rows = table.rows[start : start + group]
                requests = [VoiceClone(text=r.text, lang=r.lang, ref_audio=r.voice.audio, ref_text=r.ref_text,
                                       icl=r.icl, seed=r.seed, voice=r.voice.name) for r in rows]
                budgets = [frame_budget(r.text, opts.max_new_tokens) for r in rows]
                kept = generate_guarded(tts, requests, budgets, opts.retries, prompt_cache=cache,
                                        slots=opts.batch_size)
                for row, g in zip(rows, kept, strict=True):
                    wav, sr = decode_codes(tts, g.result.codes, g.result.ref_code)
                    name = _file_name(row, used)
                    sf.write(str(tmp / name), wav, sr, subtype="PCM_16")
                    entries.append({"file": name, "id": row.id, "text": row.text, "lang": row.lang,
                                    "voice": row.voice.name, "seconds": round(g.result.frames / FRAME_RATE_HZ, 3),
                                    "frames": g.result.frames, "budget": g.budget, "seed": g.seed, "tries": g.tries,
                                    "stopped": g.stopped})
                    if g.tries > 1:
                        log.warning("speak: %s (%r) %s after %d tries (budget %d frames)", name, row.text[:40],
                                    "stopped" if g.stopped else "STILL RAN PAST ITS BUDGET: kept, cut at the budget",
                                    g.tries, g.budget)
                bar.update(len(rows))
        (tmp / "manifest.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries),
                                            encoding="utf-8")
        result = SpeakResult(out=Path(opts.out), lines=len(entries), seconds=round(sum(e["seconds"] for e in entries),
                             3), resampled=sum(e["tries"] > 1 for e in entries),
                             runaways=sum(not e["stopped"] for e in entries))
        write_provenance(tmp, {"model": model, "script": table.source, "lines": result.lines,
                               "seconds": result.seconds, "resampled": result.resampled, "runaways": result.runaways,
                               "options": {"seed": opts.seed, "retries": opts.retries, "batch_size": opts.batch_size,
                                           "engine": "fast", "device": device,
                                           "budget": budget_rule(opts.max_new_tokens)}}, stage=STAGE)
    return result
