"""``validate-awq ... --workers N``: N processes on this machine without a launcher.

The command starts N-1 helper copies of itself before it imports anything heavy (a launcher such as ``torchrun``
first imports torch, seconds before any worker starts), then works as worker 0. Helpers take batches from the
shared job cache exactly like ``torchrun`` / ``accelerate launch`` workers (claims in
:mod:`tts_awq.validate.jobcache`), write no report and print nothing but a crash: the main worker waits for every
batch (taking over a dead helper's claim), writes the report, and stops the helpers that are still loading when
nothing is left to compute. With GPUs, worker i uses ``cuda:i``; on CPU each process gets ``cores / N`` threads.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO

from tts_awq.errors import UserError

log = logging.getLogger(__name__)

#: ``"RANK/SIZE"`` in a helper's environment.
HELPER_ENV = "TTS_AWQ_VALIDATE_HELPER"
STOP_WAIT_S = 10.0


def helper_rank() -> tuple[int, int] | None:
    """``(rank, size)`` when this process is a helper started by ``--workers``."""
    value = os.environ.get(HELPER_ENV, "")
    if not value:
        return None
    rank, size = value.split("/")
    return int(rank), int(size)


def helper_argv(args: argparse.Namespace) -> list[str]:
    """The ``python -m tts_awq.validate`` arguments that repeat this run (without ``--workers``)."""
    argv = [str(args.out), "--reference", str(args.reference), "--profile", args.profile,
            "--batch-size", str(args.batch_size), "--engine", args.engine, "--device", args.device]
    for flag, value in (("--eval", args.eval), ("--seeds", args.seeds), ("--max-new-tokens", args.max_new_tokens),
                        ("--gates", args.gates), ("--n-prompts", args.n_prompts), ("--asr-model", args.asr_model)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


@dataclass
class Helpers:
    """The helper processes of one run, with their captured stderr (shown only when a helper fails)."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)

    @classmethod
    def start(cls, args: argparse.Namespace, workers: int) -> Helpers:
        return cls.launch(["-m", "tts_awq.validate", *helper_argv(args)], workers)

    @classmethod
    def launch(cls, argv: list[str], workers: int) -> Helpers:
        """Start ``python ARGV`` as helpers 1..workers-1 (``HELPER_ENV`` tells each its rank)."""
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        helpers = cls()
        for rank in range(1, workers):
            stderr = tempfile.TemporaryFile(prefix=f"tts-awq-helper-{rank}-")
            env = {**os.environ, HELPER_ENV: f"{rank}/{workers}"}
            helpers.procs.append(subprocess.Popen([sys.executable, *argv],
                                                  env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                  stderr=stderr))
            helpers.logs.append(stderr)
        return helpers

    def finish(self) -> None:
        """Called once every record exists: stop helpers still starting up, report the ones that failed."""
        for rank, (proc, stderr) in enumerate(zip(self.procs, self.logs, strict=True), 1):
            code = proc.poll()
            if code is None:  # nothing left to compute: it is still importing or loading
                proc.terminate()
                _wait(proc)
            elif code != 0:
                stderr.seek(0)
                lines = stderr.read().decode(errors="replace").strip().splitlines()
                last = lines[-1] if lines else "no output"
                log.warning("helper worker %d exited with code %d (%s); its batches were computed here", rank,
                            code, last[:300])
            stderr.close()

    def stop(self) -> None:
        """The main worker failed or was interrupted: end every helper."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, stderr in zip(self.procs, self.logs, strict=True):
            _wait(proc)
            stderr.close()


@contextmanager
def helpers_for(argv: list[str], workers: int) -> Iterator[None]:
    """Around a command's work: with ``workers > 1`` (and not itself a helper) start ``python ARGV`` helpers,
    stop them if the work fails, reap them (reporting failures) when it succeeds."""
    if workers > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--workers starts its own processes; under torchrun / accelerate launch leave it out (the "
                        "launcher's processes already share the run)")
    helpers = Helpers.launch(argv, workers) if workers > 1 and helper_rank() is None else None
    try:
        yield
    except BaseException:
        if helpers is not None:
            helpers.stop()
        raise
    if helpers is not None:
        helpers.finish()


def _wait(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
