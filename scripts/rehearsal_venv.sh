#!/usr/bin/env bash
# Builds (once) .rehearse/venv: Python 3.12 with the GPU image's versions that matter (scripts/gpu_image.txt; torch
# 2.11 from PyPI runs on the CPU), then removes every package the image lacks (scripts/gpu_image_packages.txt), so
# that only the carried .whl/ wheels can supply the rest. Prints the venv's python on stdout.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$REPO/.rehearse/venv"
find_python312() {
    for candidate in "${PY312:-}" python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
        [ -n "$candidate" ] || continue
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            command -v "$candidate" || echo "$candidate"
            return 0
        fi
    done
    echo "error: no working python3.12 found (set PY312=/path/to/python3.12)" >&2
    return 2
}
KEY="$(cat "$REPO/scripts/gpu_image.txt" "$REPO/scripts/gpu_image_packages.txt" | sha256sum | cut -c1-16)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.key" 2>/dev/null)" = "$KEY" ]; then
    echo "$VENV/bin/python"
    exit 0
fi
PY312="$(find_python312)"
rm -rf "$VENV"
# torch 2.11's CUDA build and its nvidia wheels: about 3.3 GB downloaded, 5.8 GB installed. No pip cache (it would
# hold a second copy); refuse up front rather than fail half-way with "No space left on device".
export PIP_NO_CACHE_DIR=1
free_mb="$(df -Pm "$REPO" | awk 'NR==2 {print $4}')"
if [ "${free_mb:-0}" -lt "${REHEARSAL_NEEDS_MB:-10500}" ]; then
    echo "error: the rehearsal venv needs about 10.5 GB free on $(df -P "$REPO" | awk 'NR==2 {print $6}'), ${free_mb} MB are free; free some space (or set REHEARSAL_NEEDS_MB) and run again" >&2
    exit 4
fi
mkdir -p "$(dirname "$VENV")"
echo "[rehearsal] building $VENV with $PY312 (torch 2.11 and the GPU image's versions; a few minutes once)" >&2
"$PY312" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip 2> >(grep -v 'is ignored' >&2)
"$VENV/bin/python" -m pip install -q -r "$REPO/scripts/gpu_image.txt" 2> >(grep -v 'is ignored' >&2)
# Anything a dependency pulled in that the image does not have would hide a missing wheel: remove it.
extra="$("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | cut -d= -f1 | tr 'A-Z_.' 'a-z--' | sort -u \
         | comm -23 - <(grep -v '^#' "$REPO/scripts/gpu_image_packages.txt" | sort -u) || true)"
if [ -n "$extra" ]; then
    echo "[rehearsal] removing packages the GPU image lacks: $(echo $extra)" >&2
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip uninstall -q -y $extra
fi
echo "$KEY" > "$VENV/.key"
echo "$VENV/bin/python"
