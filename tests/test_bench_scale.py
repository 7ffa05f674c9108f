"""scripts/bench_scale.py end to end on the tiny preset (a smoke run of the benchmark, not a speed claim)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_scale_runs_every_case_on_the_tiny_preset(tmp_path: Path) -> None:
    out = tmp_path / "scale.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_scale.py"), "--preset", "tiny", "--root", str(tmp_path / "ck"),
         "--n-samples", "2", "--seq-len", "24", "--frames", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    for heading in ("a) quantize-talker", "b) size on disk", "c) load", "d) decode per codec frame"):
        assert heading in table
    for variant in ("BF16 checkpoint, bf16", "BF16 checkpoint, fp32", "INT4 dequant, bf16", "INT4 int4mm, bf16"):
        assert f"| {variant} |" in table
    results = json.loads(out.with_suffix(".json").read_text())
    decode = results["decode"]
    for r in decode.values():
        # (the tiny model may stop before its budget; timing differences at this size are noise, not checked)
        assert r["talker_frame_s"] > 0 and r["frames"][1] > r["frames"][0]
        assert r["peak_rss_mb"] > 100
    int4 = decode["INT4 int4mm, bf16"]["bytes"]["cpu"]
    dense = decode["BF16 checkpoint, bf16"]["bytes"]["cpu"]
    assert int4["talker_int4_linears"] > 0 and "talker_int4_linears" not in dense
    # the INT4 talker layers hold about a quarter of the BF16 layers' bytes
    assert int4["talker_int4_linears"] + int4["talker_layers_other"] < 0.35 * dense["talker_layers_other"]
    assert len(results["quantize"]["layer_seconds"]) == 4
