"""The README runs: every command of its fenced ``bash`` and ``python`` blocks is executed against the tiny checkpoints.

The blocks are parsed from README.md at collection time (edit the README and this runs the new text). A bash block
is split into commands (``\\`` continuations joined, ``# comments`` dropped by shlex); each becomes one test, in
README order, all run in ONE working directory, like a reader typing them top to bottom, so the chains of the README
share their outputs (quantize-talker -> load_quantized / validate-awq; blend -> quantize-talker -> validate-awq ->
push --dry-run -> push -> the Python ``push(...)``). Running one test alone runs the commands before it first.

Rewrites (all of them are here, nothing else changes a command):

* Hub ids (:data:`HUB_STANDINS`) are served by a local, offline Hugging Face cache (``HF_HUB_CACHE``,
  ``HF_HUB_OFFLINE=1``) holding tiny checkpoints, so the command text stays as written and the Hub-id path of
  ``resolve_source`` runs; local stand-ins (:data:`LOCAL_STANDINS`: ``./tts``, ``kokoro.pth``, ``voice.wav``, ...)
  are placed in the working directory; a file named by a README ``yaml`` block's ``# NAME`` first line (gates.yaml)
  is written from that block.
* ``.venv/bin/X`` and bare console scripts run in-process through the functions ``pyproject.toml`` maps them to
  (the script's presence next to this interpreter is checked); ``python scripts/X.py`` runs in a subprocess;
  ``accelerate launch ... -m tts_awq.validate`` runs as written with the venv's ``accelerate`` (without CUDA it
  starts CPU processes; with fewer GPUs than ``--num_processes`` it skips); ``make demo`` runs the Makefile's demo
  recipe with ``$(BIN)/python`` = this interpreter, its tiny checkpoints pre-seeded from this session's build
  (reused as on a second ``make demo``).
* Slow commands get the arguments of :data:`SIZING` appended (argparse: the last value wins). validate-awq commands
  without ``--gates`` also get :data:`TINY_GATES` (the defaults are for real checkpoints; a random tiny talker
  fails them, and push needs a passing report); a README gates file gets ``runaway_excess_upper95: null`` when it
  does not name that gate (:func:`_sized_gates`: one generation cannot resolve the profile's bound).
* Without CUDA, ``--device cuda[:N]`` becomes ``--device cpu`` (and ``device="cuda"`` in Python blocks), except for
  the tools in :data:`CUDA_ONLY`, whose ``--device cuda`` lines skip.
* ``tts-awq push`` (and the Python ``push(...)``) talk to the fake Hub of tests/test_push.py on 127.0.0.1
  (``HF_ENDPOINT``, set as if before the process started; the loopback-only guard of test_push.py is active).
* An OUT that an earlier README command wrote (the README reuses ``darwin-3`` and ``merged``) is removed before the
  command that writes it again.

Commands that are not run are listed in :data:`NOT_RUN` with the reason and what is checked instead;
:func:`test_every_readme_block_is_accounted_for` fails on any command that is neither run nor listed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from test_push import TOKEN, FakeHub, loopback_only  # noqa: F401  (the fake Hub and its autouse network guard)

from tts_awq.checkpoint.files import hash_tree

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CUDA = torch.cuda.is_available()

# ------------------------------------------------------------------------------------------ the one override table

#: Appended to the README command of each tool so it runs in seconds on the tiny checkpoints ("{work}" is the
#: working directory). validate-awq: 1 prompt x 1 seed x 24 frames takes ~6 s here; these override the profile's
#: sizes (even --profile quick, 10 x 2 x 512 frames, takes minutes on this CPU; the default profile hours).
SIZING: dict[str, list[str]] = {
    "quantize-talker": ["--n-samples", "2", "--seq-len", "24", "--calib-batch-size", "2"],
    "validate-awq": ["--n-prompts", "1", "--seeds", "1", "--max-new-tokens", "24"],
    "make demo": ["--n-samples", "2", "--seq-len", "24"],
    # the load and decode cases are covered by tests/test_bench_scale.py (~100 s); --out keeps the repo's table
    "scripts/bench_scale.py": ["--preset", "tiny", "--n-samples", "2", "--seq-len", "24", "--frames", "2",
                               "--cases", "quantize", "--out", "{work}/bench_scale-{line}.md"],
    # the two-process case is what tests/test_validate_scale.py runs; here batch 1 vs 8 on 2 jobs and the
    # release-rate part on 4 jobs
    "scripts/bench_validate.py": ["--n-prompts", "2", "--max-new-tokens", "24", "--skip-processes",
                                  "--target-jobs", "4", "--out", "{work}/bench_validate-{line}.md"],
    # the tiny cases on 2 rows of at most 8 frames (the 1.7B case builds a 3.9 GB checkpoint: not here)
    "scripts/bench_teacher.py": ["--rows", "2", "--max-new-tokens", "8", "--preset-frames", "0", "--root",
                                 "{work}/bench-teacher", "--out", "{work}/bench_teacher-{line}.md"],
    # the tiny talkers of the README chain never stop by themselves: every row runs to a 24-frame budget
    "tts-awq teacher": ["--max-new-tokens", "24", "--batch-size", "2"],
    "tts-awq speak": ["--max-new-tokens", "24"],
}

#: Gates for the random tiny talker, given to validate-awq commands that name no --gates file: every default gate
#: off but these teacher-forced fidelity ones (the tiny talker's top-1 is ~0.7; its free-running lengths are noise
#: and its stop signal is not measurable within 24 frames; see tests/test_validate.py and scripts/demo.py).
TINY_GATES: dict[str, Any] = {"teacher_top1": 0.3, "kl_mean": 0.05}

#: Commands (as shlex.join of the README text, comments dropped) that are not run: the reason, and the check run
#: instead (see :func:`_not_run_check`).
NOT_RUN: dict[str, str] = {
    "make test": "the whole test suite (this module is part of it): what .ci/run runs first; "
                 "checked: .ci/run holds the line verbatim",
    "bash scripts/wheel_smoke.sh": "builds the wheel and pip-installs it into a fresh venv (minutes): what .ci/run "
                                   "runs after make test; checked: .ci/run holds the line verbatim",
    "python scripts/bench_vs_autoawq.py": "installs AutoAWQ 0.2.9 and llm-compressor 0.14.0.1 from PyPI into "
                                          ".bench/ venvs (needs the network) and runs for many minutes; checked: "
                                          "its --help parses",
    "bash scripts/gpu_check.sh --rehearse --only b .rehearse/ci": "builds a Python 3.12 venv with torch 2.11 "
        "(minutes, network): what .ci/run runs last; checked: .ci/run holds the line verbatim",
    "bash scripts/gpu_wheels.sh": "downloads wheels (network): the rehearsal above runs it; checked: "
                                  "gpu_check.sh --rehearse calls it and .ci/run runs the rehearsal",
    "bash scripts/gpu_check.sh OUT": "needs CUDA; checked: without CUDA scripts/gpu_check.py refuses with one "
                                     "error line and exit 2",
    "bash scripts/gpu_check.sh --rehearse OUT": "the whole rehearsal (10+ minutes); .ci/run runs its part b; "
                                                "checked: as the line with --only b",
    "python scripts/bench_export.py": "builds a 1.7B-shaped checkpoint (~12 GB) and runs for many minutes; "
                                      "checked: its --help parses",
    "tts-awq export darwin-3-awq darwin-3-mlx --to mlx": "the tiny talker's speaker encoder has kernel-1 convs with "
        "<= 64 input channels, which mlx-audio's shape rule misreads, so the export refuses it (as intended); "
        "tests/test_export.py exports the tiny-mlx preset and runs it in mlx-audio (and checks that refusal); "
        "checked: the command parses",
}

#: README commands that are known not to work yet (a regex over the command text): run, and expected to fail with
#: this reason (the test fails once they work, so the entry gets removed).
KNOWN_BROKEN: dict[str, str] = {}

#: Hub ids of the README and the tiny checkpoint (conftest ``tiny_root`` name, files left out) served under them.
HUB_STANDINS: dict[str, tuple[str, tuple[str, ...]]] = {
    "FINAL-Bench/Darwin-TTS-1.7B-Cross": ("tiny-darwin", ("speech_tokenizer", "provenance.json")),  # no codec
    "Qwen/Qwen3-TTS-12Hz-1.7B-Base": ("tiny-tts-base", ("provenance.json",)),
    "Qwen/Qwen3-1.7B": ("tiny-qwen3-lm", ("provenance.json",)),
}
#: Hub repos the README pushes to (on the fake Hub).
PUSH_TARGETS = ("you/darwin-3-awq", "you/darwin-3-gguf")
#: Local stand-ins the README names, placed in the working directory: a ``tiny_root`` name, ``ft-dialect`` (a 10 %
#: blend), ``voice:<clip>`` (from calib_data/voices) or ``pth:<variant>`` (Kokoro-shaped nested dicts).
LOCAL_STANDINS: dict[str, str] = {
    "tts": "tiny-tts-base",
    "qwen3": "tiny-qwen3-lm",
    "darwin": "tiny-darwin",
    "base": "tiny-tts-base",
    "ft-emotion": "tiny-darwin",
    "ft-dialect": "ft-dialect",
    "kokoro.pth": "pth:0",
    "a.pth": "pth:1",
    "b.pth": "pth:2",
    "voice.wav": "voice:en_female.wav",
}
#: Tools that need CUDA for their ``--device cuda`` line to mean anything (a benchmark of the GPU).
CUDA_ONLY = ("scripts/bench_scale.py", "scripts/bench_validate.py")
#: Console scripts (pyproject [project.scripts]) and what they write (None: reads / edits OUT in place).
CONSOLE_SCRIPTS = ("quantize-talker", "validate-awq", "tts-awq")
#: ``python -m`` / ``accelerate launch -m`` modules and the CLI they are.
MODULE_CLIS = {"tts_awq.validate": "validate-awq", "tts_awq.cli": "tts-awq"}
WRITERS = ("quantize-talker", "tts-awq blend", "tts-awq repack", "tts-awq merge")
FENCE_LANGS = ("bash", "python", "yaml", "")  # "": layouts and synopses, not commands


# ------------------------------------------------------------------------------------------------- README parsing


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # line number of the opening fence
    text: str
    section: str


@dataclass(frozen=True)
class Step:
    """One README command (bash) or Python block, in README order."""

    index: int
    kind: str  # "bash" | "python"
    line: int
    text: str  # bash: shlex.join(argv); python: the block
    argv: tuple[str, ...] = ()
    section: str = ""

    @property
    def tool(self) -> str:
        return tool_of(self.argv)[0] if self.kind == "bash" else "python"

    @property
    def launcher(self) -> tuple[str, ...]:
        """What starts the tool (``quantize-talker``, ``accelerate launch ... -m tts_awq.validate``, ``python X``)."""
        return tool_of(self.argv)[1] if self.kind == "bash" else ()

    @property
    def args(self) -> tuple[str, ...]:
        """The tool's own arguments (for tts-awq: the subcommand and its arguments)."""
        return self.argv[len(self.launcher):]

    @property
    def id(self) -> str:
        slug = re.sub(r"[^\w.-]+", "-", self.tool).strip("-")
        return f"L{self.line}-{slug}"


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    section, i = "", 0
    while i < len(lines):
        match = re.match(r"^```(\S*)\s*$", lines[i])
        if match:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            blocks.append(Block(match.group(1), i + 1, "\n".join(lines[i + 1:end]), section))
            i = end + 1
            continue
        if lines[i].startswith("#"):
            section = lines[i].lstrip("#").strip()
        i += 1
    return blocks


def bash_commands(block: Block) -> list[tuple[int, tuple[str, ...]]]:
    """``(line, argv)`` of every command: backslash continuations joined, comments dropped."""
    commands: list[tuple[int, tuple[str, ...]]] = []
    buffer, start = "", None
    for number, raw in enumerate(block.text.splitlines(), block.line + 1):
        start = number if start is None else start
        if raw.rstrip().endswith("\\"):
            buffer += raw.rstrip()[:-1] + " "
            continue
        argv = tuple(shlex.split(buffer + raw, comments=True))
        if argv:
            commands.append((start, argv))
        buffer, start = "", None
    assert not buffer, f"README.md:{block.line}: a continuation line ends the block"
    return commands


def tool_of(argv: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """(tool, launcher): the CLI or script a command runs and the leading words that start it."""
    head = argv[0].removeprefix(".venv/bin/")
    if "-m" in argv[:-1] and head in ("python", "python3", "accelerate", "torchrun"):
        at = argv.index("-m") + 2
        tool = MODULE_CLIS.get(argv[at - 1], f"-m {argv[at - 1]}")
        return (f"tts-awq {argv[at]}" if tool == "tts-awq" else tool), argv[:at]
    if head == "tts-awq" and len(argv) > 1:
        return f"tts-awq {argv[1]}", argv[:1]
    if head in CONSOLE_SCRIPTS:
        return head, argv[:1]
    if head in ("python", "python3", "make", "bash") and len(argv) > 1:
        return (argv[1] if head.startswith("python") else f"{head} {argv[1]}"), argv[:2]
    return head, argv[:1]


def known_broken(step: Step) -> str | None:
    return next((why for pattern, why in KNOWN_BROKEN.items() if re.search(pattern, step.text)), None)


def readme_steps() -> tuple[list[Step], list[Block]]:
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    steps: list[Step] = []
    for block in blocks:
        if block.lang == "bash":
            for line, argv in bash_commands(block):
                steps.append(Step(len(steps), "bash", line, shlex.join(argv), argv, block.section))
        elif block.lang == "python":
            steps.append(Step(len(steps), "python", block.line, block.text, (), block.section))
    return steps, blocks


STEPS, BLOCKS = readme_steps()


def yaml_files(blocks: list[Block]) -> dict[str, str]:
    """README yaml blocks that open with ``# NAME``: the file a command refers to, with the block as its text."""
    files = {}
    for block in blocks:
        if block.lang == "yaml":
            first = block.text.splitlines()[0] if block.text else ""
            match = re.match(r"^#\s*(\S+\.ya?ml)\s*$", first)
            assert match, f"README.md:{block.line}: a yaml block must open with '# FILENAME'"
            files[match.group(1)] = block.text + "\n"
    return files


def _sized_gates(text: str) -> str:
    """A README gates file as written, plus ``runaway_excess_upper95: null`` when it does not name that gate: the
    :data:`SIZING` run (1 generation) cannot resolve the profile's runaway bound, which validate-awq refuses before
    generating (exit 2; tested in tests/test_hardening.py)."""
    import yaml

    data = yaml.safe_load(text) or {}
    gates = data.get("gates", data) if isinstance(data, dict) else {}
    if not isinstance(gates, dict) or "runaway_excess_upper95" in gates:
        return text
    return text + ("  " if "gates" in data else "") + "runaway_excess_upper95: null  # test sizing (1 generation)\n"


def _runs_in_process(step: Step) -> bool:
    return step.kind == "bash" and len(step.launcher) == 1 and step.launcher[0].removeprefix(".venv/bin/") in \
        CONSOLE_SCRIPTS


def _launched(step: Step) -> bool:
    """``accelerate launch ... -m tts_awq.validate`` and the like: run as written, with the venv's launcher."""
    return step.kind == "bash" and "-m" in step.launcher and step.tool in (*CONSOLE_SCRIPTS, "validate-awq")


def _handled(step: Step) -> bool:
    return (step.kind == "python" or _runs_in_process(step) or _launched(step) or step.tool in SIZING
            or step.text in NOT_RUN)


# ------------------------------------------------------------------------------------------------- the workspace


@dataclass
class Result:
    code: int | None
    out: str = ""
    err: str = ""
    seconds: float = 0.0
    skipped: str | None = None
    argv: list[str] = field(default_factory=list)
    namespace: dict[str, Any] = field(default_factory=dict)
    commits_before: int = 0


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _kokoro(variant: int) -> dict[str, Any]:
    """A Kokoro-82M-shaped nested state dict; variant 0 (the base) uses the legacy weight-norm spelling, the others
    the parametrizations spelling (merge matches them)."""
    g = torch.Generator().manual_seed(variant)
    g_name, v_name = (("weight_g", "weight_v") if variant == 0 else
                      ("parametrizations.weight.original0", "parametrizations.weight.original1"))
    conv = "module.generator.conv_post"
    emb = torch.randn(8, 4, generator=g)
    return {"bert": {"module.embeddings.word_embeddings.weight": emb},
            "decoder": {f"{conv}.{g_name}": torch.rand(2, 1, 1, generator=g) + 0.5,
                        f"{conv}.{v_name}": torch.randn(2, 3, 5, generator=g), f"{conv}.bias": torch.zeros(2)},
            "meta": {"version": 1}}


@contextlib.contextmanager
def _patched(env: dict[str, str | None], attrs: list[tuple[Any, str, Any]], cwd: Path) -> Iterator[None]:
    saved_env = {k: os.environ.get(k) for k in env}
    saved_attrs = [(obj, name, getattr(obj, name)) for obj, name, _ in attrs]
    saved_cwd = os.getcwd()
    try:
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for obj, name, value in attrs:
            setattr(obj, name, value)
        os.chdir(cwd)
        yield
    finally:
        os.chdir(saved_cwd)
        for obj, name, value in saved_attrs:
            setattr(obj, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Readme:
    """The working directory, the stand-ins, the fake Hub, and each step's result (run once, in README order)."""

    def __init__(self, root: Path, tiny_root: dict[str, Path], hub: FakeHub) -> None:
        from tts_awq.upstream.blend import blend_ffn

        self.root, self.hub = root, hub
        self.work = root / "work"
        self.work.mkdir()
        self.cache = root / "hub-cache"
        self.results: dict[int, Result] = {}
        self.written: set[str] = set()  # OUTs written by README commands
        sources = dict(tiny_root)
        sources["ft-dialect"] = blend_ffn(tiny_root["tiny-tts-base"], tiny_root["tiny-qwen3-lm"], 0.10,
                                          root / "ft-dialect")
        self.tiny_dir = tiny_root["tiny-darwin"].parent
        for repo_id, (name, drop) in HUB_STANDINS.items():
            owner, repo = repo_id.split("/")
            sha = hashlib.sha1(repo_id.encode()).hexdigest()
            shutil.copytree(sources[name], self.cache / f"models--{owner}--{repo}" / "snapshots" / sha,
                            ignore=shutil.ignore_patterns(*drop))
            (self.cache / f"models--{owner}--{repo}" / "refs").mkdir()
            (self.cache / f"models--{owner}--{repo}" / "refs" / "main").write_text(sha)
        for rel, what in LOCAL_STANDINS.items():
            target = self.work / rel
            if what.startswith("pth:"):
                torch.save(_kokoro(int(what[4:])), target)
            elif what.startswith("voice:"):
                shutil.copyfile(REPO / "calib_data" / "voices" / what[6:], target)
            else:
                target.symlink_to(sources[what], target_is_directory=True)
        for name, text in yaml_files(BLOCKS).items():
            (self.work / name).write_text(_sized_gates(text), encoding="utf-8")
        from tts_awq.validate.gates import default_gates

        gates = {name: None for name, spec in default_gates().items() if spec.enabled} | TINY_GATES
        (root / "tiny-gates.json").write_text(json.dumps(gates), encoding="utf-8")
        self.sources = {name: sources[name] for name in ("tiny-tts-base", "tiny-qwen3-lm", "tiny-darwin",
                                                         "ft-dialect")}
        self.sources_before = {name: hash_tree(path) for name, path in self.sources.items()}
        self.workspace_entries = {p.name for p in self.work.iterdir()}

    # ---------------------------------------------------------------------------------------------- running

    def result(self, index: int) -> Result:
        for step in STEPS[:index + 1]:
            if step.index not in self.results:
                self.results[step.index] = self._run(step)
        return self.results[index]

    def _run(self, step: Step) -> Result:
        if step.kind == "python":
            return self._run_python(step)
        if step.text in NOT_RUN:
            return Result(code=None, skipped=f"not run: {NOT_RUN[step.text]}")
        args = list(step.args)
        if "--device" in args:
            at = args.index("--device") + 1
            if args[at].startswith("cuda") and not CUDA:
                if step.tool in CUDA_ONLY:
                    return Result(code=None, skipped=f"{step.tool} --device cuda: no CUDA here")
                args[at] = "cpu"
        if "--num_processes" in step.launcher and CUDA and "--multi_gpu" in step.launcher:
            wanted = int(step.launcher[step.launcher.index("--num_processes") + 1])
            if torch.cuda.device_count() < wanted:  # without CUDA it starts CPU processes instead
                return Result(code=None, skipped=f"needs {wanted} GPUs, this machine has {torch.cuda.device_count()}")
        if step.tool == "validate-awq" and "--gates" not in args:
            args += ["--gates", str(self.root / "tiny-gates.json")]
        args += [a.format(work=self.work, line=step.line) for a in SIZING.get(step.tool, [])]
        if _runs_in_process(step):
            return self._run_cli(step, [step.launcher[0].removeprefix(".venv/bin/"), *args])
        launcher = [str(Path(sys.executable).parent / step.launcher[0]) if _launched(step) else step.launcher[0],
                    *step.launcher[1:]]
        return self._run_subprocess(step, [*launcher, *args])

    def _env(self, step: Step) -> tuple[dict[str, str | None], list[tuple[Any, str, Any]]]:
        import huggingface_hub.constants as hf_constants

        pushes = step.tool == "tts-awq push" or "push(" in step.text
        env: dict[str, str | None] = {"HF_HUB_CACHE": str(self.cache), "HF_ENDPOINT": self.hub.url,
                                      "HF_HUB_OFFLINE": None if pushes else "1", "HF_TOKEN": TOKEN}
        # huggingface_hub reads these once at import: set them as a fresh process with this environment sees them
        return env, [(hf_constants, "ENDPOINT", self.hub.url), (hf_constants, "HF_HUB_CACHE", str(self.cache)),
                     (hf_constants, "HF_HUB_OFFLINE", not pushes)]

    def _out_of(self, step: Step, argv: list[str]) -> Path | None:
        if step.tool not in WRITERS:
            return None
        from tts_awq.cli import build_parser

        args = (build_parser("quantize-talker").parse_args(argv[1:]) if step.tool == "quantize-talker"
                else build_parser().parse_args(argv[1:]))
        return Path(args.out if args.out is not None else args.alpha[-1])  # blend: `--alpha 0.03 OUT`

    def _run_cli(self, step: Step, argv: list[str]) -> Result:
        from tts_awq.cli import main, quantize_talker_main, validate_awq_main

        entry: Callable[[list[str]], int] = {"quantize-talker": quantize_talker_main,
                                             "validate-awq": validate_awq_main, "tts-awq": main}[argv[0]]
        out = self._out_of(step, argv)
        if out is not None and out.as_posix().rstrip("/") in self.written:
            shutil.rmtree(self.work / out)  # an earlier README example wrote the same OUT
        env, attrs = self._env(step)
        stdout, stderr = io.StringIO(), io.StringIO()
        commits = len(self.hub.commits)
        start = time.perf_counter()
        with _patched(env, attrs, self.work), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = entry(argv[1:])
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
        if out is not None and code == 0:
            self.written.add(out.as_posix().rstrip("/"))
        return Result(code, stdout.getvalue(), stderr.getvalue(), time.perf_counter() - start, argv=argv,
                      commits_before=commits)

    def _run_subprocess(self, step: Step, argv: list[str]) -> Result:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(self.cache)}
        if _launched(step):
            pass
        elif step.tool == "make demo":
            recipe = make_recipe("demo")
            assert len(recipe) == 1, recipe
            argv = [sys.executable if a == "$(BIN)/python" else a for a in shlex.split(recipe[0])] + argv[2:]
            assert "$(" not in " ".join(argv), argv
            out = Path(argv[argv.index("--out") + 1])
            # a matching tiny build is reused by the demo (as on a second `make demo`): 15 s less here
            shutil.copytree(self.tiny_dir, self.work / out / "checkpoints")
        elif step.tool == "scripts/bench_scale.py":
            argv = [sys.executable, *argv[1:]]
            root = Path(argv[argv.index("--root") + 1]) if "--root" in argv else None
            if root is not None and not (self.work / root).exists():
                shutil.copytree(self.tiny_dir, self.work / root)  # the tiny preset's build, reused by the script
        else:
            argv = [sys.executable, *argv[1:]]
        argv = [str(REPO / a) if a.startswith("scripts/") else a for a in argv]
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=self.work, env=env, capture_output=True, text=True, timeout=600)
        return Result(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start, argv=argv)

    def _run_python(self, step: Step) -> Result:
        code = step.text
        if not CUDA:
            code = code.replace('device="cuda"', 'device="cpu"')
        env, attrs = self._env(step)
        namespace: dict[str, Any] = {"__name__": "__readme__"}
        stdout = io.StringIO()
        commits = len(self.hub.commits)
        start = time.perf_counter()
        err, status = "", 0
        with _patched(env, attrs, self.work), contextlib.redirect_stdout(stdout):
            try:
                exec(compile(code, f"README.md:{step.line}", "exec"), namespace)  # noqa: S102 - the README's code
            except Exception:  # noqa: BLE001 - recorded, so the steps after it still run
                err, status = traceback.format_exc(), 1
        return Result(status, stdout.getvalue(), err, time.perf_counter() - start, namespace=namespace,
                      commits_before=commits)


def make_recipe(target: str) -> list[str]:
    lines = (REPO / "Makefile").read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[at + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


@pytest.fixture(scope="module")
def readme(tiny_root: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Readme]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared 2-core machine
    with FakeHub() as hub:
        yield Readme(tmp_path_factory.mktemp("readme"), tiny_root, hub)
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------------ checks


def _package_ok(pkg: Path) -> dict[str, Any]:
    prov = json.loads((pkg / "provenance.json").read_text())
    assert prov["stage"] == "quantize-talker"
    assert json.loads((pkg / "config.json").read_text())["quantization_config"]["quant_method"] == "awq"
    assert (pkg / "speech_tokenizer" / "config.json").is_file()
    return prov


def _check_command(step: Step, result: Result, rd: Readme) -> None:
    work = rd.work
    tool = step.tool
    if tool == "quantize-talker":
        prov = _package_ok(work / result.out.strip().splitlines()[-1])
        if "--codec-from" in step.args:
            assert prov.get("files", {}).get("codec_from_base"), "speech_tokenizer/ not recorded as copied"
    elif tool == "validate-awq":
        pkg = work / step.args[0]
        report = json.loads((pkg / "validation" / "report.json").read_text())
        recorded = json.loads((pkg / "provenance.json").read_text())["validation"]
        assert recorded["passed"] is report["passed"]
        assert ("PASS" if result.code == 0 else "FAIL") in result.out
        if "--gates" in step.args:  # a README gates file: its entries are the gates the report used
            import yaml

            wanted = yaml.safe_load((work / step.args[step.args.index("--gates") + 1]).read_text())
            wanted = wanted.get("gates", wanted)
            for name, threshold in wanted.items():
                if threshold is None:
                    assert name not in report["gates"], name
                else:
                    assert report["gates"][name]["threshold"] == threshold, (name, report["gates"][name])
    elif tool == "tts-awq blend":
        outs = [work / p for p in result.out.split()]
        alphas = [a for a in step.args[step.args.index("--alpha") + 1:] if re.fullmatch(r"[\d.eE+-]+", a)]
        assert len(outs) == len(alphas), (outs, alphas)
        for out in outs:
            assert json.loads((out / "provenance.json").read_text())["stage"] == "blend"
    elif tool == "tts-awq repack":
        out = work / result.out.strip()
        assert json.loads((out / "provenance.json").read_text())["stage"] == "repack"
        assert (out / "speech_tokenizer" / "model.safetensors").is_file()
    elif tool == "tts-awq merge":
        out = work / result.out.strip()
        assert json.loads((out / "provenance.json").read_text())["stage"] == "merge"
        assert (out / "model.safetensors").is_file() or (out / "model.pth").is_file()
    elif tool == "tts-awq push":
        if "--dry-run" in step.args:
            assert "dry run" in result.out and "nothing was sent" in result.out
            assert len(rd.hub.commits) == result.commits_before
        else:
            assert len(rd.hub.commits) == result.commits_before + 1
            landed = rd.hub.commits[-1]["files"]
            assert "README.md" in landed and "provenance.json" in landed
            assert "model.safetensors" in landed or "talker-q4_1.gguf" in landed  # a package, or a gguf export
            assert rd.hub.url in result.out
    elif tool == "tts-awq export":
        out = work / result.out.strip()
        prov = json.loads((out / "provenance.json").read_text())
        assert prov["stage"] == "export" and prov["export"]["format"] == step.args[step.args.index("--to") + 1]
        check = prov["export"]["check"]
        assert check["linears"] > 0 and check["max_abs_dw"] <= check["max_bound"]
    elif tool == "make demo":
        out = Path(result.argv[result.argv.index("--out") + 1])
        assert (work / out / "tiny-darwin-awq.wav").stat().st_size > 1000
        _package_ok(work / out / "tiny-darwin-awq")
        assert "INT4 package:" in result.out and "audio" in result.out
    elif tool == "scripts/bench_scale.py":
        table = Path(result.argv[result.argv.index("--out") + 1]).read_text()
        assert "a) quantize-talker" in table and "b) size on disk" in table
    elif tool == "tts-awq teacher":
        out = work / result.out.strip()
        prov = json.loads((out / "provenance.json").read_text())
        assert prov["stage"] == "teacher" and prov["teacher"]["validation"]["status"] == "passed"
        assert prov["rows"] == 4 and sorted(prov["shards"]) == sorted(
            f"data/{p.name}" for p in (out / "data").glob("*.parquet"))
    elif tool == "tts-awq speak":
        out = work / result.out.strip()
        entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        assert entries and sorted(e["file"] for e in entries) == sorted(p.name for p in out.glob("*.wav"))
        assert "speak: " in result.err and "resampled after a runaway" in result.err
    elif tool == "scripts/bench_teacher.py":
        table = Path(result.argv[result.argv.index("--out") + 1]).read_text()
        assert "a) tiny model" in table and "2 processes" in table and "c) output size" in table
    elif tool == "scripts/bench_validate.py":
        table = Path(result.argv[result.argv.index("--out") + 1]).read_text()
        assert "| 1 | " in table and "| 8 | " in table and "teacher.kl_mean" in table
        assert "c) release profile" in table and "2000 jobs estimated min" in table
    else:
        raise AssertionError(f"no output check for {tool}: add one to _check_command")


def _check_python(step: Step, result: Result, rd: Readme) -> None:
    ns = result.namespace
    if "wavs" in ns:  # the load_quantized block
        assert len(ns["wavs"]) == 1 and len(ns["wavs"][0]) > 0 and ns["sr"] == 24000
        assert ns["tts"].tts_awq_kernels and "talker_int4_linears" in str(ns["tts"].tts_awq_bytes)
    if "ds" in ns:  # the teacher dataset block
        assert ns["ds"].num_rows == 4 and ns["ds"].features["c0_topk_logprobs"].feature.feature.dtype == "float16"
    if "result" in ns:  # the push block
        assert ns["result"].commit_url.startswith(rd.hub.url), ns["result"].commit_url
        assert len(rd.hub.commits) == result.commits_before + 1
    assert result.out.strip(), "the block prints nothing"


def _not_run_check(step: Step) -> None:
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    rehearsal = "bash scripts/gpu_check.sh --rehearse --only b .rehearse/ci"
    if step.tool in ("make test", "bash scripts/wheel_smoke.sh") or step.text == rehearsal:
        assert step.text in ci, f".ci/run does not run {step.text!r}"
    elif step.text in ("bash scripts/gpu_wheels.sh", "bash scripts/gpu_check.sh --rehearse OUT"):
        assert rehearsal in ci and "gpu_wheels.sh" in (REPO / "scripts" / "gpu_check.sh").read_text()
    elif step.text == "bash scripts/gpu_check.sh OUT":
        import torch

        if not torch.cuda.is_available():
            proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), str(REPO / ".rehearse")],
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: no CUDA")
    elif step.tool == "tts-awq export":  # the command parses, and the format is registered
        from tts_awq.cli import build_parser

        args = build_parser().parse_args(list(step.argv[1:]))
        assert args.to == "mlx" and args.func.__module__ == "tts_awq.export.cli"
    elif step.tool in ("scripts/bench_vs_autoawq.py", "scripts/bench_export.py"):
        proc = subprocess.run([sys.executable, str(REPO / step.tool), "--help"], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]
    else:
        raise AssertionError(f"NOT_RUN entry {step.text!r} has no check: add one to _not_run_check")


# ------------------------------------------------------------------------------------------------------- tests


def test_every_readme_block_is_accounted_for() -> None:
    langs = {b.lang for b in BLOCKS}
    assert langs <= set(FENCE_LANGS), f"README fences in {sorted(langs - set(FENCE_LANGS))}: run or list them here"
    unaccounted = [f"README.md:{s.line}: {s.text}" for s in STEPS if not _handled(s)]
    assert not unaccounted, "README commands neither run nor in NOT_RUN:\n" + "\n".join(unaccounted)
    texts = {s.text for s in STEPS}
    stale = [k for k in NOT_RUN if k not in texts]
    stale += [k for k in KNOWN_BROKEN if not any(re.search(k, t) for t in texts)]
    assert not stale, f"NOT_RUN / KNOWN_BROKEN entries no README command matches: {stale}"
    assert all(s.tool in SIZING for s in STEPS if s.kind == "bash" and s.tool.startswith(("scripts/", "make demo"))
               and s.text not in NOT_RUN)
    hub_ids = {a for s in STEPS for a in s.argv[1:] if _REPO_ID.match(a) and not (REPO / a).exists()}
    assert hub_ids <= set(HUB_STANDINS) | set(PUSH_TARGETS), f"Hub ids without a stand-in: {hub_ids}"
    names = {a.removeprefix("./").split(":")[0] for s in STEPS for a in s.argv if a.startswith("./")}
    assert names <= set(LOCAL_STANDINS), f"local paths without a stand-in: {names - set(LOCAL_STANDINS)}"
    # the console scripts the README calls exist next to this interpreter and map to the functions run here
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {name: scripts.get(name) for name in CONSOLE_SCRIPTS} == {
        "quantize-talker": "tts_awq.cli:quantize_talker_main", "validate-awq": "tts_awq.cli:validate_awq_main",
        "tts-awq": "tts_awq.cli:main"}
    for name in {s.launcher[0].removeprefix(".venv/bin/") for s in STEPS if _runs_in_process(s) or _launched(s)}:
        assert (Path(sys.executable).parent / name).is_file(), name


def test_readme_yaml_blocks_are_accepted_by_validate_awq(tmp_path: Path) -> None:
    from tts_awq.validate.gates import load_gates

    files = yaml_files(BLOCKS)
    assert files, "no yaml block in the README"
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        gates = load_gates(tmp_path / name)
        assert any(g.threshold is not None for g in gates.values())
        assert any("--gates" in s.args and s.args[s.args.index("--gates") + 1] == name for s in STEPS), \
            f"no README command uses {name}"


@pytest.mark.parametrize("step", STEPS, ids=[s.id for s in STEPS])
def test_readme_step(step: Step, request: pytest.FixtureRequest) -> None:
    if step.text in NOT_RUN:
        _not_run_check(step)
        return
    readme: Readme = request.getfixturevalue("readme")
    result = readme.result(step.index)
    if result.skipped:
        pytest.skip(result.skipped)
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    broken = known_broken(step)
    if broken:
        assert result.code != 0, f"{step.text!r} works now: remove it from KNOWN_BROKEN"
        pytest.xfail(f"{broken}: {errors[-1] if errors else result.code}")
    if step.kind == "python":
        assert result.code == 0, f"README.md:{step.line}: the block raised\n{result.err[-3000:]}"
        _check_python(step, result, readme)
        return
    expected = {0, 1} if step.tool == "validate-awq" and "--gates" in step.args else {0}  # 1: a gate failed
    assert result.code in expected, (f"README.md:{step.line}: {shlex.join(result.argv)} exited {result.code}\n"
                                     f"{result.err[-3000:]}")
    assert "Traceback" not in result.err
    _check_command(step, result, readme)


def test_readme_left_the_stand_ins_unchanged_and_no_temp_dirs(readme: Readme) -> None:
    readme.result(len(STEPS) - 1)
    for name, path in readme.sources.items():
        assert hash_tree(path) == readme.sources_before[name], f"{name} was modified"
    hidden = {p.name for p in readme.work.iterdir() if p.name.startswith(".")} - readme.workspace_entries
    hidden -= {".bench"}  # bench_scale's --root .bench/scale, as written in the README
    assert not hidden, f"temp dirs left behind: {hidden}"
    times = ", ".join(f"{s.id} {r.seconds:.0f}s" for s, r in zip(STEPS, readme.results.values(), strict=True))
    print(f"README step times: {times}")
