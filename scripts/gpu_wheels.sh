#!/usr/bin/env bash
# Downloads into .whl/ the wheels the GPU machine's image lacks (scripts/gpu_wheels.txt, Python 3.12 manylinux
# x86_64, no dependencies) and builds a wheel of this project (installed there with --no-deps). Prints the total;
# fails above 60 MiB (a device call carries at most 64 MiB together with the working tree).
#
#   bash scripts/gpu_wheels.sh [DEST]        # DEST defaults to .whl
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$REPO/.whl}"
# Any Python with pip and setuptools >= 68 (the project's venv when there is one) can download and build them.
if [ -z "${PY:-}" ]; then
    PY=python3
    [ -x "$REPO/.venv/bin/python" ] && PY="$REPO/.venv/bin/python"
fi
LIMIT_MIB=60
rm -rf "$DEST"
mkdir -p "$DEST"
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux2010_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$tag")
done
LIST="$REPO/scripts/gpu_wheels.txt"
# Binary-or-universal wheels for CPython 3.12 on manylinux x86_64; lines marked "# build:" are sdist-only pure-Python
# packages, built into a py3-none-any wheel here.
grep -v -E '^\s*(#|$)' "$LIST" | grep -v '# build:' | sed 's/#.*//' > "$DEST/.download.txt"
grep -E '# build:' "$LIST" | sed 's/#.*//' > "$DEST/.build.txt"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$DEST" -r "$DEST/.download.txt" 2> >(grep -v 'is ignored' >&2)
if [ -s "$DEST/.build.txt" ]; then
    "$PY" -m pip wheel -q --no-deps -w "$DEST" -r "$DEST/.build.txt" 2> >(grep -v 'is ignored' >&2)
fi
rm -f "$DEST/.download.txt" "$DEST/.build.txt"
# The project: a pure-Python wheel carrying calib_data (built from the working tree, no build isolation).
"$PY" -m pip wheel -q --no-deps --no-build-isolation "$REPO" -w "$DEST" 2> >(grep -v 'is ignored' >&2)
rm -rf "$REPO/build"
count="$(find "$DEST" -type f -name '*.whl' | wc -l)"
bytes="$(find "$DEST" -type f -name '*.whl' -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
mib="$(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1048576}')"
echo "gpu_wheels: $count wheels in $DEST, $mib MiB (limit $LIMIT_MIB MiB)"
if [ "$bytes" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "error: $DEST holds $mib MiB of wheels, over the $LIMIT_MIB MiB a device call can carry; trim scripts/gpu_wheels.txt" >&2
    exit 1
fi
