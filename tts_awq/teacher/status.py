"""Which models may teach: a validated tts-awq package, or a dense checkpoint (what packages are validated
against). An unvalidated or failed package is refused unless the caller allows it (then the provenance says so).
The verdict comes from the same checks as ``push`` (:func:`tts_awq.publish.package.load_package`)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tts_awq.checkpoint.files import hash_tree, list_files
from tts_awq.errors import UserError
from tts_awq.validate.models import Side


def teacher_record(side: Side, allow_unvalidated: bool, command: str = "teacher") -> dict[str, Any]:
    """``{"spec", "kind", "sha256", "validation": {...}}``; raises when an unvalidated package is not allowed."""
    if not side.quantized:
        files = hash_tree(side.root, [r for r in list_files(side.root) if r.endswith((".safetensors", ".json"))
                                      and not r.startswith("validation/")])
        return {"spec": side.source.spec, "kind": "dense checkpoint", "sha256": _digest(files), "files_sha256": files,
                "validation": {"status": "not applicable (a dense checkpoint is the reference packages are "
                                         "validated against)"}}
    from tts_awq.publish.package import load_package

    package = load_package(side.root)
    outputs = package.provenance.get("outputs_sha256", {})
    record = package.provenance.get("validation") if isinstance(package.provenance.get("validation"), dict) else {}
    report = package.report or {}
    validation = {"status": "passed" if package.validated else f"NOT VALIDATED: {package.validation_problem}",
                  "report_sha256": record.get("report_sha256"), "passed": report.get("passed"),
                  "failed_gates": report.get("failed_gates"), "profile": (report.get("settings") or {}).get("profile")}
    if not package.validated and not allow_unvalidated:
        raise UserError(f"{side.root}: {package.validation_problem}; run validate-awq on it until it passes, or pass "
                        f"--allow-unvalidated to use it as a {command} anyway (recorded in provenance.json)")
    return {"spec": side.source.spec, "kind": "tts-awq INT4 package", "sha256": _digest(outputs),
            "validation": validation}


def _digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
