"""A package directory as ``push`` sees it: provenance, config, files, integrity and validation status.

Nothing here touches the network or writes to the package: it only reads and hashes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tts_awq.checkpoint.files import list_files, read_json, sha256_file
from tts_awq.errors import UserError
from tts_awq.provenance import PROVENANCE_NAME, read_provenance, verify_outputs

QUANTIZE_STAGE = "quantize-talker"
#: ``tts-awq export`` output (tts_awq.export.stage.EXPORT_STAGE): a package rewritten for another runtime.
EXPORT_STAGE = "export"
VALIDATION_DIR = "validation"
JOBS_CACHE_PREFIX = f"{VALIDATION_DIR}/jobs/"
REPORT_REL = f"{VALIDATION_DIR}/report.json"


@dataclass
class Package:
    """A checked package directory (see :func:`load_package`)."""

    root: Path
    provenance: dict[str, Any]
    config: dict[str, Any]
    files: list[str]
    report: dict[str, Any] | None = None
    #: why the package does not count as validated; None when its report exists, matches provenance and passed
    validation_problem: str | None = None
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def validated(self) -> bool:
        return self.validation_problem is None

    @property
    def source(self) -> dict[str, Any]:
        """The ``inputs`` entry with role "source" (the direct parent)."""
        for entry in self.provenance.get("inputs") or []:
            if isinstance(entry, dict) and entry.get("role") == "source":
                return entry
        return {}

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())


check_integrity = verify_outputs  # the check lives in tts_awq.provenance (validate-awq and the loader use it too)


def check_validation_files(root: Path, provenance: dict[str, Any], files: list[str]) -> None:
    """Every file under ``validation/`` must be one validate-awq wrote and recorded (``validation.files``), unchanged;
    nothing else may ride along with a push, validated or not."""
    on_disk = [rel for rel in files if rel.startswith(f"{VALIDATION_DIR}/")]
    if not on_disk:
        return
    record = provenance.get("validation")
    listed = record.get("files") if isinstance(record, dict) else None
    if not isinstance(listed, dict):
        raise UserError(f"{root / on_disk[0]}: provenance.json has no list of validation files (no validate-awq "
                        "record, or one from an older tts-awq); re-run validate-awq or remove validation/")
    for rel in on_disk:
        if rel not in listed:
            raise UserError(f"{root / rel}: not written by validate-awq (not in provenance.json validation.files); "
                            "remove it")
        if rel == REPORT_REL:
            continue  # its sha256 decides validated / unvalidated (validation_status), as documented for push
        if sha256_file(root / rel) != listed[rel]:
            raise UserError(f"{root / rel}: changed after validate-awq wrote it; re-run validate-awq")


def validation_status(root: Path, provenance: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(report or None, problem or None). The report is returned only when its sha256 matches provenance."""
    path = root / REPORT_REL
    if not path.is_file():
        return None, f"no validation report ({REPORT_REL})"
    record = provenance.get("validation")
    recorded = record.get("report_sha256") if isinstance(record, dict) else None
    if not recorded:
        return None, "provenance.json has no validation record (report_sha256)"
    if sha256_file(path) != recorded:
        return None, f"{REPORT_REL} does not match provenance.json's report_sha256 (edited, or from another run)"
    try:
        report = read_json(path, "validation report")
    except UserError as exc:
        return None, str(exc)
    if report.get("passed") is not True:
        failed = [str(name) for name in report.get("failed_gates") or []]
        return report, "validation failed" + (f" (gates: {', '.join(failed)})" if failed else "")
    return report, None


def load_package(root: Path) -> Package:
    """Read and check a package directory made by ``quantize-talker`` (integrity is always enforced)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: package directory not found; pass the OUT directory of quantize-talker")
    list_files(root)  # a link out of the package is refused before anything of it is read
    provenance = read_provenance(root)
    if provenance is None:
        raise UserError(f"{root / PROVENANCE_NAME}: not found; push only takes a package written by quantize-talker")
    if "unreadable" in provenance and len(provenance) == 1:
        raise UserError(f"{root / PROVENANCE_NAME}: not valid JSON; restore it or re-run quantize-talker")
    if provenance.get("stage") not in (QUANTIZE_STAGE, EXPORT_STAGE):
        raise UserError(f"{root / PROVENANCE_NAME}: stage is {provenance.get('stage')!r}, not {QUANTIZE_STAGE!r} or "
                        f"{EXPORT_STAGE!r}; push publishes quantized packages and their exports only")
    config = read_json(root / "config.json", "config.json")
    if provenance.get("stage") == QUANTIZE_STAGE and not isinstance(config.get("quantization_config"), dict):
        raise UserError(f"{root / 'config.json'}: has no quantization_config; not a quantized package")
    # validation/jobs/ is validate-awq's resumable per-job cache: local state, never part of a pushed package.
    files = [rel for rel in list_files(root) if not rel.startswith(JOBS_CACHE_PREFIX)]
    check_integrity(root, provenance, files)
    check_validation_files(root, provenance, files)
    report, problem = validation_status(root, provenance)
    sizes = {rel: (root / rel).stat().st_size for rel in files}
    return Package(root=root, provenance=provenance, config=config, files=files, report=report,
                   validation_problem=problem, sizes=sizes)
