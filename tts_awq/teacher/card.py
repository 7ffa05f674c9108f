"""The teacher dataset's README (``datasets`` card: YAML features + a column table) and provenance.json."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tts_awq import __version__
from tts_awq.provenance import git_commit, library_versions
from tts_awq.teacher import columns
from tts_awq.teacher.shards import DATA_DIR

STAGE = "teacher"


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_readme(out: Path, hidden: bool, provenance: dict[str, Any]) -> None:
    import datasets

    features = datasets.Features.from_arrow_schema(columns.schema(hidden))
    header = {"configs": [{"config_name": "default", "data_files": [{"split": "train",
                                                                   "path": f"{DATA_DIR}/train-*.parquet"}]}],
              "dataset_info": {"features": features._to_yaml_list()}}
    import yaml

    opts, teacher = provenance["options"], provenance["teacher"]
    table = "\n".join(f"| `{name}` | {text} |" for name, text in columns.descriptions(hidden).items())
    body = f"""# Distillation targets from {teacher['spec']}

Written by `tts-awq teacher` {__version__}: {provenance['rows']} rows, {provenance['frames']} codec frames
({provenance['frames'] / columns.FRAME_RATE_HZ / 3600:.3f} h of audio at 12.5 frames/s), top-{opts['k']} talker and
top-{opts['k_cp']} code-predictor log-probabilities (float16), {provenance['runaways']} rows kept as runaways
(`stopped: false`). Teacher: {teacher['kind']}, sha256 `{teacher['sha256']}`, validation: {teacher['validation']['status']}.

```python
import datasets
ds = datasets.load_dataset("parquet", data_dir="{out.name}", split="train")
```

| column | meaning |
|---|---|
{table}

`provenance.json` records the teacher (sha256, validation record), the data (sha256 or Hub revision), k, the seeds,
the engine, the runaway budget rule and the tool version; each shard's sha256 is listed there.
"""
    _atomic_text(out / "README.md", "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + body)


def write_provenance(out: Path, data: dict[str, Any], stage: str = STAGE) -> dict[str, Any]:
    record = {"tool": {"name": "tts-awq", "version": __version__, "git_commit": git_commit()}, "stage": stage,
              "created_unix": int(time.time()), **data, "libraries": library_versions()}
    _atomic_text(out / "provenance.json", json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return record
