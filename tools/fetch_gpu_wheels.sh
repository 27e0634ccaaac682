#!/usr/bin/env bash
# tools/fetch_gpu_wheels.sh: download, HERE (where pip reaches PyPI), the Python
# wheels that the lent GPU machine lacks, for its Python 3.12 on x86-64, into
# .whl/ (or the folder given as $1). tools/gpu_check.sh installs them there into
# /tmp/site; the device call must name ".whl" in its carry.
#
#   bash tools/fetch_gpu_wheels.sh            # -> .whl/, and /.whl/ into .git/info/exclude
#   bash tools/fetch_gpu_wheels.sh /tmp/whl   # elsewhere (nothing excluded)
#   WHEELS="asv==0.6.6 asv-runner==0.3.2" bash tools/fetch_gpu_wheels.sh
#
# What the machine's image has and lacks (.library/device/KINDS.md, 2026-11):
# it has numpy 2.5.2, cupy-cuda13x 14.2.0, torch 2.11, pytest, pytest-xdist,
# threadpoolctl, packaging, pyyaml, tabulate, build, zipp; it lacks
#   array-api-compat   arrseg's runtime dependency: nothing imports without it
#   array-api-strict   the tests' xp=array_api_strict (skipped without it)
#   asv, asv-runner, json5, importlib-metadata (+ lazy-importer, its dependency
#   on Python < 3.15): the asv step (gpu_timings.py needs none of them)
# The versions are those of this repository's .venv, where the suite runs;
# array-api-compat 1.16 and array-api-strict 2.6 set no upper bound on numpy
# (the machine's is 2.5, ours 2.4), and its CuPy is the 14.2 we test with, so
# no numpy or CuPy wheel is
# carried (nor could one be: a CuPy wheel is far over the 64 MiB a call
# carries). zipp is carried too, as importlib-metadata 10 needs zipp >= 3.20
# and the image's version is not recorded; asv's pympler and virtualenv are
# left out (asv imports them only to create environments; --python=same
# creates none).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEST=${1:-.whl}
if [[ -n ${PYTHON:-} ]]; then
    PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi
# shellcheck disable=SC2206  # WHEELS is a space-separated list
PKGS=(${WHEELS:-array-api-compat==1.16.0 array-api-strict==2.6.1 asv==0.6.6 asv-runner==0.3.2
      json5==0.17.3 importlib-metadata==10.2.0 lazy-importer==0.1.0 zipp==4.1.2})

mkdir -p "$DEST"
# the device README's command: binary wheels only, CPython 3.12, manylinux x86-64
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST" "${PKGS[@]}"

if [[ $DEST == .whl || $DEST == .whl/ ]]; then
    # keep .whl/ out of commits; the device call carries it by name
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
fi

# pip on the device stops at two versions of one project: refuse them here
dupes=$(for f in "$DEST"/*.whl; do basename "$f" | cut -d- -f1 | tr 'A-Z.-' 'a-z__'; done |
        sort | uniq -d)
if [[ -n $dupes ]]; then
    echo "error: several wheels of: $dupes (in $DEST); keep one version of each" >&2
    exit 1
fi
ls -1 "$DEST"
echo "$(du -sh "$DEST" | cut -f1) in $DEST; name \".whl\" in the device call's carry"
