#!/usr/bin/env bash
# tools/asv_compare_numpy.sh: the NumPy benchmarks of a base commit against
# the working tree, in this venv, then `asv compare` (what `asv continuous`
# does, without building a virtualenv per commit: the base's arrseg is put
# first on PYTHONPATH from a git worktree, and the working tree's benchmark
# files time both).
#
#   bash tools/asv_compare_numpy.sh BASE [BENCH_REGEX]
#
# BASE: a commit (e.g. the main branch before a change); BENCH_REGEX default
# "SeedConfig|SegmenterFit|SegmenterPredict". The working tree's results are
# recorded under HEAD's hash: commit first. asv compare's output, with
# --factor 1.1 (a change is reported beyond 10 %), is printed last.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
base=$(git rev-parse "${1:?usage: asv_compare_numpy.sh BASE [BENCH_REGEX]}")
head=$(git rev-parse HEAD)
bench=${2:-"SeedConfig|SegmenterFit|SegmenterPredict"}
asv=${ASV:-$root/.venv/bin/asv}
worktree=$(mktemp -d)/base
git worktree add --detach "$worktree" "$base" >/dev/null
trap 'git worktree remove --force "$worktree"' EXIT

cd asv_benchmarks
"$asv" machine --yes >/dev/null
for side in base head; do
    if [ $side = base ]; then path=$worktree; hash=$base; else path=$root; hash=$head; fi
    echo "::: $side ($hash) from $path"
    PYTHONPATH=$path ASV_PYTHONPATH=$path "$asv" run --python=same \
        --set-commit-hash="$hash" --bench "$bench" --show-stderr
done
"$asv" compare --factor 1.1 --split "$base" "$head"
