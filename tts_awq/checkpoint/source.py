"""Resolve SRC (a local directory or a Hugging Face repo id) to a local directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tts_awq.checkpoint.arch import is_repo_id
from tts_awq.checkpoint.confine import walk_files
from tts_awq.errors import UserError


@dataclass(frozen=True)
class ResolvedSource:
    path: Path
    spec: str
    repo_id: str | None = None
    revision: str | None = None

    def describe(self) -> dict[str, str | None]:
        return {"spec": self.spec, "path": str(self.path), "repo_id": self.repo_id, "revision": self.revision}


def offline() -> bool:
    """HF_HUB_OFFLINE is set: resolve Hub ids from the local cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "true", "yes", "on"}


#: Everything of a Qwen3-TTS repo except the main weights: enough to borrow its codec and processor files.
CODEC_AND_PROCESSOR_FILES = ["*.json", "*.txt", "speech_tokenizer/*"]


def resolve_source(spec: str | os.PathLike[str], revision: str | None = None, what: str = "SRC",
                   allow_patterns: list[str] | None = None) -> ResolvedSource:
    """Return a local directory for ``spec``; Hub ids are fetched with huggingface_hub (honours HF_HUB_OFFLINE).

    ``allow_patterns`` limits a Hub download (e.g. to the codec of a base checkpoint)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        walk_files(path)  # a link out of SRC is refused here, before any stage writes anything
        return ResolvedSource(path=path.resolve(), spec=str(spec))
    if path.exists():
        raise UserError(f"{path}: {what} is a file; pass the checkpoint directory that holds config.json")
    text = str(spec)
    if not is_repo_id(text):
        raise UserError(f"{text}: {what} directory not found and not a Hugging Face repo id (owner/name); check the path")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        local = snapshot_download(repo_id=text, revision=revision, local_files_only=offline(),
                                  allow_patterns=allow_patterns)
    except LocalEntryNotFoundError as exc:
        hint = "unset HF_HUB_OFFLINE or download it first" if offline() else "check the network or the repo id"
        raise UserError(f"{text}: {what} is not in the local Hugging Face cache and cannot be downloaded; {hint}") from exc
    except RepositoryNotFoundError as exc:
        raise UserError(f"{text}: {what} repo not found on the Hub (or private); check the id or log in") from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise UserError(f"{text}: {what} could not be downloaded ({exc.__class__.__name__}); retry or pass a local directory") from exc
    walk_files(Path(local))
    resolved_revision = Path(local).name if revision is None else revision
    return ResolvedSource(path=Path(local), spec=text, repo_id=text, revision=resolved_revision)
