"""provenance.json: what made a directory, from which inputs (with sha256), with which parameters.

Every stage (blend, repack, merge, quantize-talker, validate-awq) writes one through :class:`Provenance`, and a
parent's provenance is embedded when the source has one, so the chain Darwin blend -> INT4 package is traceable.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tts_awq import __version__
from tts_awq.checkpoint.files import hash_tree, list_files, sha256_file, write_json

PROVENANCE_NAME = "provenance.json"
_LIBRARIES = ("torch", "transformers", "qwen-tts", "safetensors", "huggingface_hub", "datasets", "numpy", "accelerate")


def git_commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str | None]:
    import torch

    versions: dict[str, str | None] = {"python": platform.python_version(),
                                       "torch_num_threads": str(torch.get_num_threads())}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def read_provenance(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / PROVENANCE_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {"unreadable": str(path)}


def input_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of an input directory except its provenance.json."""
    return hash_tree(root, [rel for rel in list_files(root) if rel != PROVENANCE_NAME])


def describe_input(role: str, source: Any, root: Path, files_sha256: dict[str, str] | None = None) -> dict[str, Any]:
    """An input directory: its spec/revision, sha256 of every file (``files_sha256`` when the caller already hashed
    them), and its own provenance if it has one."""
    entry: dict[str, Any] = {"role": role}
    entry.update(source.describe() if hasattr(source, "describe") else {"spec": str(source), "path": str(root)})
    entry["files_sha256"] = files_sha256 if files_sha256 is not None else input_hashes(root)
    parent = read_provenance(root)
    if parent is not None:
        entry["provenance"] = parent
    return entry


@dataclass
class Provenance:
    stage: str
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, name: str):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings_s[name] = round(self.timings_s.get(name, 0.0) + time.perf_counter() - start, 3)

    def add_input(self, role: str, source: Any, root: Path, files_sha256: dict[str, str] | None = None) -> None:
        self.inputs.append(describe_input(role, source, root, files_sha256))

    def to_dict(self, out_dir: Path, device: str | None = None) -> dict[str, Any]:
        outputs = hash_tree(out_dir, [rel for rel in list_files(out_dir) if rel != PROVENANCE_NAME])
        return {
            "tool": {"name": "tts-awq", "version": __version__, "git_commit": git_commit()},
            "stage": self.stage,
            "created_unix": int(time.time()),
            "parameters": self.parameters,
            "inputs": self.inputs,
            **self.extra,
            "libraries": library_versions(),
            "device": device,
            "timings_s": self.timings_s,
            "outputs_sha256": outputs,
        }

    def write(self, out_dir: Path, device: str | None = None) -> dict[str, Any]:
        data = self.to_dict(out_dir, device)
        write_json(Path(out_dir) / PROVENANCE_NAME, data)
        return data


def verify_outputs(root: Path, provenance: dict[str, Any], files: list[str] | None = None) -> None:
    """Raise a one-line UserError naming the first file (sorted) that differs from ``outputs_sha256``.

    Files under ``validation/`` are created after quantize-talker and are not hashed there (validate-awq records
    their own sha256); any other file not in ``outputs_sha256`` counts as a change."""
    from tts_awq.errors import UserError

    recorded = provenance.get("outputs_sha256")
    if not isinstance(recorded, dict) or not recorded:
        raise UserError(f"{root / PROVENANCE_NAME}: has no outputs_sha256; re-run quantize-talker to write a complete package")
    files = list_files(root) if files is None else files
    present = set(files)
    for rel in sorted(recorded):
        if rel not in present:
            raise UserError(f"{root / rel}: listed in provenance.json but missing; restore it or re-run quantize-talker")
        if sha256_file(root / rel) != recorded[rel]:
            raise UserError(f"{root / rel}: changed since quantize-talker wrote it (sha256 differs from provenance.json); "
                            "restore it or re-run quantize-talker")
    for rel in files:
        if rel in recorded or rel == PROVENANCE_NAME or rel.startswith("validation/"):
            continue
        raise UserError(f"{root / rel}: not in provenance.json outputs_sha256 (added after quantize-talker); "
                        "move it out of the package")
