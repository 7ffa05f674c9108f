"""validate-awq: the quality report that decides whether an INT4 package may be used as a teacher or published.

Public API: :func:`validate_package` (returns a :class:`Report`), :func:`load_gates` / :data:`GATES` (gate
definitions and the YAML/JSON override), and the CLI hook ``tts_awq.validate.cli.add_validate``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GATES", "Report", "load_gates", "validate_package"]

from tts_awq.validate.gates import GATES, load_gates


def __getattr__(name: str) -> Any:  # heavy imports (torch, qwen-tts) only when the runner is needed
    if name in {"validate_package", "Report"}:
        from tts_awq.validate import runner

        return getattr(runner, name)
    raise AttributeError(name)
