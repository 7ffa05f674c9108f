"""Export formats, found through a registry: ``tts-awq export --to`` takes its choices from :data:`FORMATS`.

Adding a format: write one module with a writer ``(source, out_dir) -> ExportResult`` and decorate it with
:func:`register`; the stage (:mod:`tts_awq.export.stage`), the CLI and the model card pick it up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tts_awq.errors import UserError

if TYPE_CHECKING:
    from tts_awq.export.source import ExportSource


@dataclass
class ExportResult:
    """What a writer made: its own check of every INT4 linear, and facts for provenance and the card."""

    check: dict[str, Any]  # see tts_awq.export.check.LinearChecks.summary
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


Writer = Callable[["ExportSource", Path], ExportResult]


@dataclass(frozen=True)
class ExportFormat:
    """A registered format: its writer, the runtime that loads it and the Hub ``library_name`` of that runtime."""

    name: str
    writer: Writer
    runtime: str
    library_name: str
    summary: str = ""


FORMATS: dict[str, ExportFormat] = {}


def register(name: str, runtime: str, library_name: str) -> Callable[[Writer], Writer]:
    """Decorator: add a writer to :data:`FORMATS` under ``name``."""

    def wrap(fn: Writer) -> Writer:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        FORMATS[name] = ExportFormat(name, fn, runtime, library_name, summary)
        return fn

    return wrap


def load_formats() -> dict[str, ExportFormat]:
    """Import every format module (each registers itself) and return the registry."""
    from tts_awq.export import compressed_tensors_format, gguf_format, mlx_format  # noqa: F401

    return FORMATS


def get_format(name: str) -> ExportFormat:
    formats = load_formats()
    if name not in formats:
        raise UserError(f"--to {name!r}: unknown export format; choose one of {', '.join(sorted(formats))}")
    return formats[name]
