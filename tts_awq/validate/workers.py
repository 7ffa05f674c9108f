"""Scale-out: which share of the batches this process computes, and waiting for the others.

``accelerate launch --multi_gpu --num_processes N`` (it also starts N CPU processes on a machine without GPUs;
``--cpu`` would start only one) and ``torchrun --nproc_per_node N`` start N copies with ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` in the environment; each copy joins a gloo process group
(only used as a barrier), starts on the batches of its own stripe and then helps with any batch nobody holds
(claims in :mod:`tts_awq.validate.jobcache`). Rank 0 merges every record into the one report. Without those
variables the run is a single worker; two plain runs on the same OUT share the work the same way.
``validate-awq --workers N`` starts its own helpers (:mod:`tts_awq.validate.spawn`): no process group, the
main worker waits on the job cache instead of a barrier.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tts_awq.errors import UserError
from tts_awq.validate import jobcache
from tts_awq.validate.collect import JobRecord
from tts_awq.validate.plan import Job
from tts_awq.validate.spawn import helper_rank

log = logging.getLogger(__name__)
POLL_S = 0.5


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    group: bool = False  # joined a torch.distributed process group (launcher workers), else --workers helpers

    @classmethod
    def from_env(cls) -> World:
        helper = helper_rank()
        if helper is not None:
            return cls(rank=helper[0], size=helper[1], local_rank=helper[0])
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        world = cls(rank=int(os.environ.get("RANK", "0")), size=size,
                    local_rank=int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))), group=True)
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return world

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def helper(self) -> bool:
        """A helper started by ``--workers``: no progress bar (its stderr is only kept for a crash)."""
        return not self.group and self.rank > 0

    def device(self, device: str) -> str:
        """``cuda`` means this worker's own GPU (``cuda:LOCAL_RANK``) when several workers run."""
        if device != "cuda" or self.size == 1:
            return device
        import torch

        if self.local_rank >= torch.cuda.device_count():
            raise UserError(f"{self.size} workers with --device cuda need a GPU each, this machine has "
                            f"{torch.cuda.device_count()}; use fewer workers or --device cpu")
        return f"cuda:{self.local_rank}"

    def barrier(self) -> None:
        if self.group:
            import torch.distributed as dist

            dist.barrier()

    def order(self, n_batches: int) -> list[int]:
        """This worker's stripe first, then everything else (to help with unclaimed batches)."""
        own = list(range(self.rank, n_batches, self.size))
        return own + [i for i in range(n_batches) if i % self.size != self.rank]


def run_batches(cache: Path, keyed: list[tuple[str, list[Job], int]], world: World,
                compute: Callable[[list[Job], int], list[JobRecord]], progress: Callable[[int], None]) -> int:
    """Compute every batch that has no cached records and no live claim; then wait for the batches other
    workers hold, taking over any whose worker died. Returns how many jobs this process computed."""

    checked: set[int] = set()

    def done(index: int) -> bool:
        """A trusted record exists; a torn, altered or foreign one is logged once (then recomputed)."""
        quiet = index in checked
        checked.add(index)
        return jobcache.load_records(cache, keyed[index][0], quiet=quiet) is not None

    def work(index: int) -> int:
        key, batch, first = keyed[index]
        jobcache.save_records(cache, key, compute(batch, first))
        return len(batch)

    return run_claimed(cache, [key for key, _, _ in keyed], world, done, work,
                       lambda i: progress(len(keyed[i][1])))


def run_claimed(cache: Path, keys: list[str], world: World, done: Callable[[int], bool],
                work: Callable[[int], int], progress: Callable[[int], None]) -> int:
    """The claim loop shared by validate-awq and teacher: unit ``i`` (claim name ``keys[i]`` under ``cache``) is
    computed by ``work(i)`` unless ``done(i)``; units claimed by live workers are waited for, a dead worker's claim
    is taken over. Returns the sum of ``work``'s results in this process."""
    computed = 0
    pending = world.order(len(keys))
    while pending:
        waiting = []
        for index in pending:
            if done(index):
                progress(index)
                continue
            with jobcache.claim(cache, keys[index]) as mine:
                if not mine:
                    waiting.append(index)
                    continue
                if not done(index):  # finished while we asked
                    computed += work(index)
            progress(index)
        if waiting and waiting == pending:
            time.sleep(POLL_S)  # every remaining unit is being computed elsewhere
        pending = waiting
    return computed
