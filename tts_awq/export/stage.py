"""``tts-awq export PKG OUT --to FORMAT``: one validated package, written for another runtime, atomically.

The package is checked as ``push`` checks it (files unchanged since quantize-talker, a passing validation report
unless ``--allow-unvalidated``); the format's writer fills a temp dir beside OUT and checks every INT4 linear it
wrote with an independent reader; only then are provenance and the parent's validation record added and the
temp dir renamed to OUT.

Example::

    from tts_awq.export.stage import ExportOptions, export_package
    export_package(ExportOptions(package=Path("darwin-3-awq"), out=Path("darwin-3-mlx"), to="mlx"))
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tts_awq.checkpoint import atomic_output_dir, sha256_file
from tts_awq.checkpoint.files import hash_tree
from tts_awq.export.registry import get_format
from tts_awq.export.source import ExportSource, open_source
from tts_awq.provenance import PROVENANCE_NAME, Provenance
from tts_awq.publish.package import EXPORT_STAGE, REPORT_REL, VALIDATION_DIR

log = logging.getLogger(__name__)

#: Files of the parent's validation record an export carries (so push can show and check the parent's report).
CARRIED_VALIDATION = (REPORT_REL, f"{VALIDATION_DIR}/report.md")


@dataclass
class ExportOptions:
    package: Path
    out: Path
    to: str
    allow_unvalidated: bool = False
    overwrite: bool = False


def _validation_record(source: ExportSource, tmp: Path) -> dict[str, Any] | None:
    """Copy the parent's report (and its markdown) into ``tmp/validation/``; the record push checks."""
    if source.package.report is None:
        return None
    (tmp / VALIDATION_DIR).mkdir(exist_ok=True)
    carried = [rel for rel in CARRIED_VALIDATION if (source.root / rel).is_file()]
    for rel in carried:
        shutil.copyfile(source.root / rel, tmp / rel)
    parent = source.package.provenance.get("validation") or {}
    return {"report_sha256": sha256_file(tmp / REPORT_REL), "passed": source.package.report.get("passed"),
            "created_unix": parent.get("created_unix"), "files": hash_tree(tmp, carried),
            "of": "parent package (the exported INT4 integers are the ones validate-awq measured)"}


def export_package(options: ExportOptions) -> Path:
    fmt = get_format(options.to)
    source = open_source(Path(options.package), options.allow_unvalidated)
    prov = Provenance(stage=EXPORT_STAGE, parameters={"to": fmt.name, "runtime": fmt.runtime,
                                                       "group_size": source.group_size,
                                                       "allow_unvalidated": options.allow_unvalidated})
    parent_prov = source.root / PROVENANCE_NAME
    with atomic_output_dir(Path(options.out), options.overwrite, sources=(source.root,), stage=EXPORT_STAGE) as tmp:
        with prov.timed("write_and_check"):
            result = fmt.writer(source, tmp)
        log.info("export check: %d INT4 linears read back, max |dw| %.3g (%s)", result.check["linears"],
                 result.check["max_abs_dw"], result.check["rule"])
        with prov.timed("hash_parent"):
            prov.add_input("source", source.root, source.root, source.package.provenance.get("outputs_sha256"))
        record = _validation_record(source, tmp)
        prov.extra = {
            "export": {"format": fmt.name, "runtime": fmt.runtime, "library_name": fmt.library_name,
                       "parent_provenance_sha256": sha256_file(parent_prov),
                       "int4_linears": len(source.int4), "dense_decoder_linears": source.kept_dense,
                       "check": result.check, **result.details, "notes": result.notes},
            "parent_validation": {"validated": source.package.validated,
                                  "problem": source.package.validation_problem,
                                  "record": source.package.provenance.get("validation")},
        }
        if record is not None:
            prov.extra["validation"] = record
        for note in result.notes:
            log.info("%s", note)
        prov.write(tmp)
    return Path(options.out)
