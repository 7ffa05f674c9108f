"""Headless matplotlib (Agg) plots for the report: one PNG per figure, returned as relative file names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

LAYER_ERRORS = "layer_errors.png"
DURATION_RATIO = "duration_ratio.png"
KL_HISTOGRAM = "kl_histogram.png"
MEL_COMPARISON = "mel_comparison.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    _pyplot().close(fig)


def layer_errors(linears: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    n = len(linears)
    fig, ax = plt.subplots(figsize=(min(40.0, 4.0 + 0.14 * n), 4.0))
    x = np.arange(n)
    ax.bar(x - 0.2, [e["awq"] for e in linears], width=0.4, label="AWQ (package)", color="tab:blue")
    ax.bar(x + 0.2, [e["rtn"] for e in linears], width=0.4, label="RTN (same bits, group)", color="tab:orange")
    short = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
             "mlp.gate_proj": "g", "mlp.up_proj": "u", "mlp.down_proj": "d"}
    step = max(1, n // 60)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([f"{e['layer']}.{short.get(e['linear'], e['linear'])}" for e in linears][::step],
                       rotation=90, fontsize=7)
    ax.set_ylabel("relative output error")
    ax.set_title("Per-linear relative output error on held-out talker activations")
    ax.legend()
    _save(fig, path)


def duration_ratio(entries: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for long_form, color, label in ((False, "tab:blue", "sentence"), (True, "tab:purple", "long-form")):
        pts = [e for e in entries if e["long_form"] == long_form and e["duration_ratio"] is not None]
        if pts:
            ax.scatter([e["reference_seconds"] for e in pts], [e["duration_ratio"] for e in pts], c=color,
                       label=label, s=24)
    bad = [e for e in entries if (e["runaway"] or e["early_stop"]) and e["duration_ratio"] is not None]
    if bad:
        ax.scatter([e["reference_seconds"] for e in bad], [e["duration_ratio"] for e in bad], facecolors="none",
                   edgecolors="red", s=90, label="runaway / early stop")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhspan(0.9, 1.1, color="green", alpha=0.12, label="+-10%")
    ax.axhline(2.0, color="red", lw=0.6, ls="--")
    ax.axhline(0.5, color="red", lw=0.6, ls="--")
    ax.set_xlabel("reference duration (s)")
    ax.set_ylabel("duration ratio package / reference")
    ax.set_title("Free-running duration ratio per prompt and seed")
    ax.legend(fontsize=8)
    _save(fig, path)


def kl_histogram(kl: np.ndarray, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    values = np.asarray(kl, dtype=np.float64)
    if values.size:
        ax.hist(values, bins=50, color="tab:blue")
        ax.axvline(float(values.mean()), color="black", lw=1.0, label=f"mean {values.mean():.4g}")
        ax.axvline(float(np.quantile(values, 0.95)), color="red", lw=1.0, ls="--",
                   label=f"p95 {np.quantile(values, 0.95):.4g}")
        ax.legend()
    ax.set_yscale("log")
    ax.set_xlabel("KL(reference || package) per frame, first codebook (nats)")
    ax.set_ylabel("frames")
    ax.set_title("Teacher-forced KL per frame")
    _save(fig, path)


def mel_comparison(mel_ref: np.ndarray, mel_pkg: np.ndarray, title: str, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(8.0, 5.0), sharex=True)
    vmin = float(min(mel_ref.min(), mel_pkg.min())) if mel_ref.size and mel_pkg.size else None
    vmax = float(max(mel_ref.max(), mel_pkg.max())) if mel_ref.size and mel_pkg.size else None
    for ax, mel, label in ((axes[0], mel_ref, "reference"), (axes[1], mel_pkg, "package")):
        ax.imshow(mel.T, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="magma")
        ax.set_ylabel(f"{label}\nmel band")
    axes[1].set_xlabel("frame (hop 256 @ 24 kHz)")
    axes[0].set_title(title)
    _save(fig, path)
