"""``write_teacher``: rows -> guarded generation or given codes -> teacher forcing -> top-k shards -> card.

Shards are the unit of resume and scale-out: each is claimed (``flock``, :mod:`tts_awq.validate.jobcache`) by
one worker, computed in input order and written atomically with a checksummed sidecar (:mod:`.shards`). Workers
come from ``--workers N`` helpers, ``torchrun`` or ``accelerate launch`` exactly as in validate-awq
(:class:`tts_awq.validate.workers.World`). The main worker writes README.md and provenance.json once every shard
is finished; a directory without provenance.json is an unfinished run (rerun the command to continue it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tts_awq import __version__
from tts_awq.constants import DEFAULT_SEED
from tts_awq.errors import UserError
from tts_awq.guard import budget_rule, frame_budget, generate_guarded
from tts_awq.qwen_tts import VoiceClone, default_dtype, generate_voice_clone, resolve_device
from tts_awq.teacher import card, columns, shards
from tts_awq.teacher.forced import ForcedDecode
from tts_awq.teacher.rows import Row, Table, read_table
from tts_awq.teacher.status import teacher_record
from tts_awq.teacher.targets import batch_targets
from tts_awq.validate import jobcache
from tts_awq.validate.models import Side, load_side, resolve_reference
from tts_awq.validate.plan import REFILL_GROUPS  # slots refilled from this many batches
from tts_awq.validate.teacher import Vocab
from tts_awq.validate.workers import World, run_claimed

log = logging.getLogger(__name__)

ENGINE = "fast"


@dataclass(frozen=True)
class TeacherOptions:
    package: str
    data: str
    out: Path
    k: int = 64
    k_cp: int | None = None  # None: same as k
    hidden: bool = False
    seed: int = DEFAULT_SEED
    retries: int = 2
    max_new_tokens: int = 2048
    batch_size: int = 8
    rows_per_shard: int = 256
    device: str = "auto"
    allow_unvalidated: bool = False
    split: str = "train"
    revision: str | None = None
    workers: int = 1
    progress: bool = True

    @property
    def cp_k(self) -> int:
        return self.k if self.k_cp is None else self.k_cp


@dataclass
class _Meter:
    """Frames computed in this process and when, for the progress bar's frames/s."""

    frames: int = 0
    start: float = field(default_factory=time.perf_counter)

    def rate(self) -> float:
        return self.frames / max(time.perf_counter() - self.start, 1e-9)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        known = {shards.DATA_DIR, shards.STATE_DIR, "README.md", "provenance.json"}
        prov = out / "provenance.json"
        stage = None
        if prov.is_file():
            import json

            try:
                stage = json.loads(prov.read_text(encoding="utf-8")).get("stage")
            except (ValueError, AttributeError):
                stage = "unreadable"
        if (prov.is_file() and stage != card.STAGE) or not (out / shards.STATE_DIR).is_dir() or \
                not {p.name for p in out.iterdir()} <= known:
            raise UserError(f"{out}: a directory that `tts-awq teacher` did not write; choose an empty or new --out")


def _check_codes(rows: list[Row], config: dict[str, Any], where: str) -> None:
    """Given codes must be ids the codec has (checked from the config, before any model is loaded)."""
    talker = config.get("talker_config") or {}
    n_codes = int(talker.get("vocab_size", 3072)) - 1024
    cp_vocab = int((talker.get("code_predictor_config") or {}).get("vocab_size", 2048))
    for row in rows:
        if row.codes is None:
            continue
        first, rest = row.codes[:, 0], row.codes[:, 1:]
        if first.min() < 0 or first.max() >= n_codes or rest.min() < 0 or rest.max() >= cp_vocab:
            raise UserError(f"{where}: row {row.index + 1} ({row.id!r}) 'codes' has ids outside the codec's range "
                            f"(codebook 0: 0..{n_codes - 1}, codebooks 1-15: 0..{cp_vocab - 1}, no EOS)")


def _identity(opts: TeacherOptions, teacher: dict[str, Any], table: Table, device: str) -> dict[str, Any]:
    """What a shard's content depends on: a change of any of these recomputes it."""
    return {"tool": __version__, "teacher_sha256": teacher["sha256"], "data_sha256": table.source["sha256"],
            "data_revision": table.source.get("revision"), "k": opts.k, "k_cp": opts.cp_k, "hidden": opts.hidden,
            "seed": opts.seed, "retries": opts.retries, "budget": budget_rule(opts.max_new_tokens), "engine": ENGINE,
            "batch_size": opts.batch_size, "rows_per_shard": opts.rows_per_shard, "rows": len(table.rows),
            "dtype": str(default_dtype(device)), "device_type": device.split(":")[0]}


def _requests(rows: list[Row]) -> list[VoiceClone]:
    return [VoiceClone(text=r.text, lang=r.lang, ref_audio=r.voice.audio, ref_text=r.ref_text, icl=r.icl,
                       seed=r.seed, voice=r.voice.name) for r in rows]


class _ShardWorker:
    """Computes the rows of one shard: sampled rows with the guard, given rows teacher-forced as given. The model
    is loaded at the first shard (a rerun whose shards are all finished loads nothing)."""

    def __init__(self, side: Side, device: str, opts: TeacherOptions, meter: _Meter) -> None:
        self.side, self.device, self.opts, self.meter = side, device, opts, meter
        self.tts: Any = None
        self.vocab: Vocab | None = None
        self.cache: dict[Any, Any] = {}

    def outputs(self, rows: list[Row]) -> list[columns.Output]:
        if self.tts is None:
            self.tts = load_side(self.side, self.device).tts
            self.vocab = Vocab.of(self.tts)
            self.meter.start = time.perf_counter()  # frames/s of the work, not of the load
        done: dict[int, columns.Output] = {}
        sampled = [r for r in rows if r.codes is None]
        given = [r for r in rows if r.codes is not None]
        group = self.opts.batch_size * REFILL_GROUPS
        for start in range(0, len(sampled), group):
            self._sampled(sampled[start : start + group], done)
        for start in range(0, len(given), self.opts.batch_size):
            self._given(given[start : start + self.opts.batch_size], done)
        return [done[r.index] for r in rows]

    def _sampled(self, rows: list[Row], done: dict[int, columns.Output]) -> None:
        budgets = [frame_budget(r.text, self.opts.max_new_tokens) for r in rows]
        kept = generate_guarded(self.tts, _requests(rows), budgets, self.opts.retries, capture=True,
                                prompt_cache=self.cache, slots=self.opts.batch_size)
        for row, g in zip(rows, kept, strict=True):
            if not g.stopped:
                log.warning("teacher: row %r ran past its %d-frame budget on all %d tries (seeds %d..%d); kept "
                            "with stopped=false", row.id, g.budget, g.tries, g.seed - g.tries + 1,
                            g.seed)
        targets = batch_targets(self.tts, [g.result for g in kept], self.vocab, self.opts.k, self.opts.cp_k,
                                self.opts.hidden)
        for row, g, t in zip(rows, kept, targets, strict=True):
            done[row.index] = self._output(row, g.result.codes, t, seed=g.seed, tries=g.tries, stopped=g.stopped,
                                           source="sampled")

    def _given(self, rows: list[Row], done: dict[int, columns.Output]) -> None:
        codes = [torch.from_numpy(r.codes) for r in rows]  # type: ignore[arg-type]
        decoder = ForcedDecode(self.tts.model.talker, codes)
        results = generate_voice_clone(self.tts, _requests(rows), max(int(c.shape[0]) for c in codes) + 1,
                                       capture=True, prompt_cache=self.cache, engine=ENGINE, decoder=decoder)
        for result in results:
            result.stopped = True  # given codes are a finished utterance: EOS follows the last frame
        targets = batch_targets(self.tts, results, self.vocab, self.opts.k, self.opts.cp_k, self.opts.hidden)
        for row, result, t in zip(rows, results, targets, strict=True):
            done[row.index] = self._output(row, result.codes, t, seed=row.seed, tries=0, stopped=True,
                                           source="given")

    def _output(self, row: Row, codes: torch.Tensor, targets: Any, seed: int, tries: int, stopped: bool,
                source: str) -> columns.Output:
        self.meter.frames += int(codes.shape[0])
        return columns.Output(row_id=row.id, text=row.text, lang=row.lang, voice=row.voice.name,
                              ref_text=row.ref_text, seed=seed, tries=tries, stopped=stopped, source=source,
                              codes=codes.numpy().astype(np.int64), targets=targets)


def _shard_summary(outputs: list[columns.Output]) -> dict[str, Any]:
    return {"frames": sum(int(o.codes.shape[0]) for o in outputs),
            "runaways": [o.row_id for o in outputs if not o.stopped],
            "resampled": {o.row_id: o.tries for o in outputs if o.tries > 1}}


def write_teacher(opts: TeacherOptions) -> Path | None:
    """Write (or continue) the teacher dataset in ``opts.out``; returns it (None on a non-main worker).

    Example::

        from tts_awq.teacher.run import TeacherOptions, write_teacher
        write_teacher(TeacherOptions(package="darwin-3-awq", data="corpus.jsonl", out=Path("kd-targets")))
    """
    from tqdm.auto import tqdm

    world = World.from_env()
    if opts.workers > 1 and world.size == 1:
        world = World(size=opts.workers)
    device = world.device(resolve_device(opts.device))
    out = Path(opts.out).expanduser()
    _check_out(out)
    side: Side = resolve_reference(opts.package)
    teacher = teacher_record(side, opts.allow_unvalidated)
    table = read_table(opts.data, opts.seed, split=opts.split, revision=opts.revision)
    identity = _identity(opts, teacher, table, device)
    plan = shards.plan_shards(len(table.rows), opts.rows_per_shard, identity)
    (out / shards.STATE_DIR).mkdir(parents=True, exist_ok=True)
    if world.main:
        (out / "provenance.json").unlink(missing_ok=True)  # the directory is unfinished until the end
    _check_codes(table.rows, side.layout.config, table.source["source"])
    meter = _Meter()
    worker = _ShardWorker(side, device, opts, meter)
    verified: set[int] = set()
    state = out / shards.STATE_DIR

    def done(i: int) -> bool:
        if i not in verified and shards.check_shard(out, plan[i]) is None:
            verified.add(i)
        return i in verified

    def work(i: int) -> int:
        shard = plan[i]
        problem = shards.check_shard(out, shard)
        if problem != "missing":
            log.warning("teacher: %s: %s; recomputing it", shard.rel, problem)
        outputs = worker.outputs(table.rows[shard.start : shard.stop])
        shards.write_shard(out, shard, columns.to_table(outputs, opts.hidden), _shard_summary(outputs))
        verified.add(i)
        return len(outputs)

    with tqdm(total=len(table.rows), desc=f"teacher rows (worker {world.rank})", unit="row",
              disable=world.helper or not opts.progress) as bar:
        def progress(i: int) -> None:
            bar.update(plan[i].stop - plan[i].start)
            bar.set_postfix(frames_per_s=f"{meter.rate():.1f}", refresh=False)

        computed = run_claimed(state, [s.key for s in plan], world, done, work, progress)
    log.info("teacher: worker %d computed %d rows (%d frames, %.1f frames/s over %.2f s)", world.rank, computed,
             meter.frames, meter.rate(), time.perf_counter() - meter.start if computed else 0.0)
    world.barrier()
    if not world.main:
        return None
    return _finish(out, opts, plan, table, teacher, identity, device)


def _finish(out: Path, opts: TeacherOptions, plan: list[shards.Shard], table: Table, teacher: dict[str, Any],
            identity: dict[str, Any], device: str) -> Path:
    records = [shards.read_sidecar(out, s) for s in plan]
    for stale in shards.stale_shards(out, {s.rel for s in plan}):
        log.info("teacher: removing %s (not part of this run's shards)", stale)
        stale.unlink()
    jobcache.clear_claims(out / shards.STATE_DIR)
    shards.remove_temp_files(out)
    runaways = [rid for r in records for rid in r["runaways"]]
    resampled = {rid: n for r in records for rid, n in r["resampled"].items()}
    data = {
        "teacher": teacher, "data": table.source, "rows": len(table.rows),
        "frames": sum(r["frames"] for r in records), "runaways": len(runaways), "runaway_ids": runaways,
        "resampled": resampled,
        "options": {**{k: v for k, v in asdict(opts).items() if k in ("k", "hidden", "seed", "retries",
                                                                     "max_new_tokens", "batch_size", "rows_per_shard",
                                                                     "split", "revision")},
                    "k_cp": opts.cp_k, "engine": ENGINE, "device": device,
                    "seeds": "row seed = the row's 'seed' or --seed + row position; a resample uses seed + 1, ...; "
                             "the fast engine draws from sha256(seed, text, lang, voice, ref_text, mode)",
                    "budget": budget_rule(opts.max_new_tokens)},
        "identity": identity,
        "shards": {r["file"]: r["sha256"] for r in records},
    }
    prov = card.write_provenance(out, data)
    card.write_readme(out, opts.hidden, prov)
    log.info("teacher: %d rows, %d frames, %d runaways kept (stopped=false), %d rows resampled -> %s", prov["rows"],
             prov["frames"], prov["runaways"], len(resampled), out)
    return out
