"""What a validation run measures: the profile sizes, the chosen prompts and the prompt x seed jobs.

Profiles (``--profile``) size the run for the question asked. ``generations`` = prompts x seeds; the default
runaway-excess gate is the smallest excess that size can bound (95 % upper bound with no runaway on either side:
about 2.7/n; see :mod:`tts_awq.validate.stats`):

=========  =======  =====  ==============  ===========================
profile    prompts  seeds  max_new_tokens  runaway_excess_upper95 gate
=========  =======  =====  ==============  ===========================
quick      10       2      512             0.25  (20 generations: a smoke test, what tests and the demo use)
standard   100      2      2048            0.03  (200 generations)
release    500      4      2048            0.01  (2000 generations, before publishing a teacher)
=========  =======  =====  ==============  ===========================

``--n-prompts``, ``--seeds`` and ``--max-new-tokens`` override a profile's sizes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from tts_awq.constants import DEFAULT_SEED, ENGINES
from tts_awq.errors import UserError
from tts_awq.prompts import Prompt, VoiceClip


@dataclass(frozen=True)
class Profile:
    name: str
    n_prompts: int
    seeds: int
    max_new_tokens: int
    runaway_excess_upper95: float


PROFILES = {p.name: p for p in (
    Profile("quick", 10, 2, 512, 0.25),
    Profile("standard", 100, 2, 2048, 0.03),
    Profile("release", 500, 4, 2048, 0.01),
)}
DEFAULT_PROFILE = "standard"


#: Batches per job group with continuous batching ("fast" engine); see :attr:`Settings.group_size`. Larger groups
#: keep the slots fuller (fewer tails where only the longest jobs run); smaller ones balance several workers
#: (see :func:`batches` for the shorter final groups).
REFILL_GROUPS = 2
#: Full groups at the end of a run that :func:`batches` cuts into batch-sized groups.
TAIL_GROUPS = 2


@dataclass(frozen=True)
class Settings:
    """The sizes and knobs of one run, after the profile and the explicit overrides were combined."""

    profile: str
    n_prompts: int
    seeds: int
    max_new_tokens: int
    batch_size: int
    device: str
    engine: str = "fast"  # talker decode loop (see tts_awq.qwen_tts.decode)

    @property
    def group_size(self) -> int:
        """Jobs per unit of work (one generate call per model, one cached record file). The "fast" engine decodes
        ``batch_size`` of them at a time and refills a slot as soon as an item stops, so a group holds several
        batches; the other engines decode the group as one padded batch that runs until its longest item stops."""
        return self.batch_size * (REFILL_GROUPS if self.engine == "fast" else 1)

    @property
    def seed_values(self) -> list[int]:
        return [DEFAULT_SEED + k for k in range(self.seeds)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_settings(profile: str | None, n_prompts: int | None, seeds: int | None, max_new_tokens: int | None,
                     batch_size: int, device: str, engine: str = "fast") -> Settings:
    name = profile or DEFAULT_PROFILE
    if name not in PROFILES:
        raise UserError(f"--profile {name}: expected one of {', '.join(PROFILES)}")
    base = PROFILES[name]
    settings = Settings(profile=name, n_prompts=n_prompts or base.n_prompts, seeds=seeds or base.seeds,
                        max_new_tokens=max_new_tokens or base.max_new_tokens, batch_size=batch_size, device=device,
                        engine=engine)
    if engine not in ENGINES:
        raise UserError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
    if settings.seeds < 1 or settings.n_prompts < 1 or settings.batch_size < 1:
        raise UserError("--seeds, --n-prompts and --batch-size must be at least 1")
    if settings.max_new_tokens < 3:
        raise UserError(f"--max-new-tokens {settings.max_new_tokens}: must be at least 3 "
                        "(qwen-tts emits at least 2 frames)")
    return settings


def select_prompts(prompts: list[Prompt], n: int | None) -> list[Prompt]:
    """``n`` prompts spread evenly over the file, long-form ones in proportion (at least one when n >= 4)."""
    if n is None or n >= len(prompts):
        return list(prompts)
    long_idx = [i for i, p in enumerate(prompts) if p.kind == "long"]
    other_idx = [i for i, p in enumerate(prompts) if p.kind != "long"]
    n_long = round(n * len(long_idx) / len(prompts))
    if long_idx and n >= 4:
        n_long = max(n_long, 1)
    n_long = min(n_long, len(long_idx))
    n_other = min(n - n_long, len(other_idx))
    n_long = n - n_other

    def spread(indices: list[int], k: int) -> list[int]:
        return [indices[(j * len(indices)) // k] for j in range(k)] if k else []

    chosen = sorted(spread(long_idx, n_long) + spread(other_idx, n_other))
    return [prompts[i] for i in chosen]


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

    def describe(self) -> dict[str, Any]:
        return {"id": self.prompt.id, "lang": self.prompt.lang, "kind": self.prompt.kind, "seed": self.seed,
                "voice": self.voice.name, "mode": "icl" if self.icl else "x-vector",
                "text_chars": len(self.prompt.text)}


def build_jobs(prompts: list[Prompt], voices: list[VoiceClip], seed_values: list[int]) -> list[Job]:
    """Every prompt x seed; voices rotate over prompts, even prompts x-vector-only, odd prompts ICL."""
    return [Job(prompt=p, index=i, seed=s, voice=voices[i % len(voices)], icl=i % 2 == 1)
            for i, p in enumerate(prompts) for s in seed_values]


def batches(jobs: list[Job], group_size: int, tail_size: int | None = None) -> list[list[Job]]:
    """Consecutive groups of ``group_size`` jobs (see :attr:`Settings.group_size`); the grouping is part of every
    cached record's key. With a smaller ``tail_size`` and more than ``2 * TAIL_GROUPS`` groups, the jobs of the
    last ``TAIL_GROUPS`` groups go in groups of ``tail_size`` instead: the last units that several workers wait
    on are shorter (a standard run at batch 8: 10 groups of 16, then 5 of 8)."""
    head = len(jobs)
    if tail_size is not None and tail_size < group_size and len(jobs) > 2 * TAIL_GROUPS * group_size:
        head = (len(jobs) - TAIL_GROUPS * group_size) // group_size * group_size
    return ([jobs[i : i + group_size] for i in range(0, head, group_size)]
            + [jobs[i : i + tail_size] for i in range(head, len(jobs), tail_size or group_size)])


def batch_key(batch: list[Job], run_identity: dict[str, Any]) -> str:
    """16 hex digits naming one batch's cached records: the run identity (package, reference, eval file,
    settings, tool version) and the batch's job keys (batching changes the sampled tokens)."""
    payload = {"run": run_identity, "jobs": [j.key for j in batch],
               "prompts": [j.prompt.text for j in batch], "voices": [j.voice.name for j in batch]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
