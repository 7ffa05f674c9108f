"""A separate venv for a runtime whose pins clash with the project's (mlx-audio needs transformers >= 5.14, qwen-tts
pins 4.57.3): built once under ``.bench/``, reused while its probe passes, never installed into the project's env."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / ".bench"


@dataclass(frozen=True)
class SideVenv:
    """``packages`` pinned for ``pip install``; ``probe`` a Python line that prints the versions when usable."""

    name: str
    packages: tuple[str, ...]
    probe: str

    @property
    def root(self) -> Path:
        return BENCH / self.name

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def log(self) -> Path:
        return BENCH / f"{self.name}-install.log"

    def problem(self) -> str | None:
        """None when the venv exists and its probe runs, else why not."""
        if not self.python.is_file():
            return f"{self.python} does not exist"
        proc = subprocess.run([str(self.python), "-c", self.probe], capture_output=True, text=True)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            return f"probe failed: {lines[-1] if lines else proc.returncode}"
        return None

    def ensure(self) -> tuple[Path | None, str | None]:
        """(python, None) once usable (building it if needed), or (None, why it could not be built)."""
        if self.problem() is None:
            return self.python, None
        BENCH.mkdir(parents=True, exist_ok=True)
        steps = [] if self.python.is_file() else [[sys.executable, "-m", "venv", str(self.root)]]
        steps.append([str(self.python), "-m", "pip", "install", "-q", *self.packages])
        with self.log.open("a") as handle:
            for cmd in steps:
                handle.write(f"\n$ {' '.join(cmd)}\n")
                handle.flush()
                if subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT).returncode != 0:
                    tail = " | ".join(self.log.read_text().splitlines()[-3:])
                    return None, f"building {self.root} failed at `{' '.join(cmd[:4])} ...` (no network?): {tail}"
        problem = self.problem()
        return (self.python, None) if problem is None else (None, f"{self.root} installed but unusable: {problem}")


MLX_AUDIO = SideVenv(
    name="mlx-audio-venv",
    packages=("mlx[cpu]==0.32.4", "mlx-audio==0.6.2"),
    probe="import mlx.core, mlx_audio.tts.utils; print(mlx.core.__version__)",
)
