#!/usr/bin/env bash
# Builds the wheel, installs it (not editable) into a fresh venv and runs quantize-talker with the built-in
# calibration prompts and voices from a directory outside the repository: the wheel must carry calib_data.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$REPO/.venv/bin/pip" wheel -q --no-deps --no-build-isolation "$REPO" -w "$WORK/dist"
"$PY" -m venv "$WORK/venv"
PIP="$WORK/venv/bin/pip"
"$PIP" install -q --upgrade pip
"$PIP" install -q "torch==2.13.0"
"$PIP" install -q --no-deps "qwen-tts==0.1.1" "torchaudio==2.11.0"
"$PIP" install -q "$WORK"/dist/tts_awq-*.whl
cd "$WORK"
"$WORK/venv/bin/python" -c "
from pathlib import Path
import tts_awq.prompts as p
assert Path(p.CALIB_DATA_DIR).is_relative_to(Path('$WORK/venv')), p.CALIB_DATA_DIR
from tts_awq.testing.tiny import build_tiny_darwin
print(build_tiny_darwin(Path('ck'))['tiny-darwin'])" > darwin.txt
"$WORK/venv/bin/quantize-talker" "$(cat darwin.txt)" pkg --n-samples 4 --seq-len 32 --device cpu
"$WORK/venv/bin/python" -c "
import json; p = json.load(open('pkg/provenance.json'))
c = p['calibration'] if 'calibration' in p else p
print('wheel smoke: calibration', json.dumps(c.get('name', c))[:120])"
test -f pkg/model.safetensors
echo "wheel smoke: OK (quantize-talker from the installed wheel, outside the repo)"
