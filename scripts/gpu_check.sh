#!/usr/bin/env bash
# The whole GPU acceptance in one command (parts a-e of scripts/gpu_check.py), on a machine with no network:
#
#   bash scripts/gpu_wheels.sh                                # here, with network: .whl/ (< 60 MiB)
#   bash scripts/gpu_check.sh OUTDIR                          # there, with .whl/ carried: ~7 min on one H200
#   bash scripts/gpu_check.sh --only b,c --reuse /tmp/tts-awq-gpu-check-1.7b OUTDIR   # a rerun of chosen parts
#   bash scripts/gpu_check.sh --rehearse OUTDIR               # here: the same script on the CPU, Python 3.12,
#                                                             # the GPU image's versions, tiny sizes
#
# It installs the carried wheels into a target dir that PYTHONPATH puts in front of the image's own packages (no
# network, no dependency resolution), prints the versions, then runs the parts; each part is timed and independent.
# Exit 0 when every part passed, 1 when one failed (the report says which), 2 on bad usage.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
usage="usage: scripts/gpu_check.sh [--rehearse] [--only a,b,c,d,e,f] [--reuse DIR] OUTDIR"
REHEARSE=0
ARGS=()
OUTDIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rehearse) REHEARSE=1; shift ;;
        --only|--reuse) [ $# -ge 2 ] || { echo "error: $1 needs a value; $usage" >&2; exit 2; }
                        ARGS+=("$1" "$2"); shift 2 ;;
        -h|--help) echo "$usage"; exit 0 ;;
        -*) echo "error: unknown option $1; $usage" >&2; exit 2 ;;
        *) [ -z "$OUTDIR" ] || { echo "error: one OUTDIR only; $usage" >&2; exit 2; }
           OUTDIR="$1"; shift ;;
    esac
done
[ -n "$OUTDIR" ] || { echo "error: OUTDIR is missing; $usage" >&2; exit 2; }

if [ "$REHEARSE" = 1 ]; then
    PY="$(bash "$REPO/scripts/rehearsal_venv.sh")"
    # The project wheel must be the working tree's: rebuild .whl/ every time (seconds once pip has cached them).
    bash "$REPO/scripts/gpu_wheels.sh" >&2
    SITE="$REPO/.rehearse/site"
    ARGS+=(--rehearse)
else
    PY="${PY:-python3}"
    SITE="${TTS_AWQ_SITE:-/tmp/tts-awq-site}"
fi
shopt -s nullglob
WHEELS=("$REPO"/.whl/*.whl)
if [ ${#WHEELS[@]} -eq 0 ]; then
    echo "error: $REPO/.whl holds no wheels; run 'bash scripts/gpu_wheels.sh' on a machine with network and carry .whl" >&2
    exit 2
fi
rm -rf "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${WHEELS[@]}" \
    2> >(grep -v -e 'is ignored' -e 'already exists' >&2)
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# The GPU machine has no network: never let a library wait on the Hub (the rehearsal checks that nothing needs it).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_DATASETS_OFFLINE=1
echo "[gpu_check] $(date -u '+%F %T') UTC; python $("$PY" -c 'import sys; print(sys.version.split()[0])'); wheels: ${#WHEELS[@]} from .whl" >&2
"$PY" -P -c "
import importlib, sys
for name in ('torch', 'transformers', 'huggingface_hub', 'tokenizers', 'accelerate', 'numpy', 'safetensors', 'qwen_tts', 'tts_awq'):
    module = importlib.import_module(name)
    print(f'[gpu_check] {name} {getattr(module, \"__version__\", \"?\")} ({module.__file__})', file=sys.stderr)
import torch
print(f'[gpu_check] cuda available: {torch.cuda.is_available()}', file=sys.stderr)
"
mkdir -p "$OUTDIR"
exec "$PY" -P "$REPO/scripts/gpu_check.py" "$OUTDIR" "${ARGS[@]}"
