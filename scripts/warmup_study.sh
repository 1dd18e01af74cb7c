#!/usr/bin/env bash
# Worker start-up against render speed on a GPU, within one time budget (STUDY_BUDGET_S, default 400 s):
#   1. one graph for every bucket (compile_dynamic_hw), empty compile cache;
#   2. the same with the cache that 1 left (a restart);
#   3. max-autotune-no-cudagraphs, one bucket, empty cache, with the time left.
# Each stage is a fresh process printing one JSON line. Extra arguments go to every stage, e.g. for a CPU try:
#   bash scripts/warmup_study.sh --model tiny --device cpu --buckets 64x64,64x128 --frames 4 --steps 3
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
BUDGET_S="${STUDY_BUDGET_S:-400}"
start=$(date +%s)
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT

stage() {   # stage NAME SECONDS ARGS...
    local name=$1 limit=$2
    shift 2
    if [ "$limit" -lt 20 ]; then
        echo "{\"stage\": \"$name\", \"skipped\": \"only $limit s left\"}"
        return
    fi
    echo "== $name (at most $limit s)" >&2
    timeout --signal=TERM --kill-after=10 "$limit" "$PY" scripts/warmup_study.py "$@"
    local code=$?
    if [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then
        echo "{\"stage\": \"$name\", \"failed\": \"still running after $limit s\"}"
    elif [ "$code" -ne 0 ]; then
        echo "{\"stage\": \"$name\", \"failed\": \"ended with exit code $code\"}"
    fi
}
left() { echo $(( BUDGET_S - ($(date +%s) - start) )); }

stage "dynamic_hw, empty cache" $(( $(left) * 3 / 5 )) --dynamic-hw --cache "$cache/dynamic" "$@"
stage "dynamic_hw, warm cache" $(( $(left) * 2 / 3 )) --dynamic-hw --cache "$cache/dynamic" "$@"
stage "max-autotune-no-cudagraphs, one bucket, empty cache" "$(left)" --cache "$cache/autotune" "$@" \
    --mode max-autotune-no-cudagraphs --buckets 512x512 --timed 1
echo "== study done in $(( $(date +%s) - start )) s" >&2
