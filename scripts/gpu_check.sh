#!/usr/bin/env bash
# The GPU check: install the wheels carried in .whl/ (see docs/PERFORMANCE.md for how to fill it), then run
# the full bench on the random full-size models: quick exact beside eager, turbo, start-up with an empty and a
# warm compile cache, LTX-Video, CUDA graphs, channels-last, in that order, each within what is left of the
# bench's deadline ("not measured" for what it cut), every figure beside its target. Output goes to
# $OUT/bench.txt (and env.txt beside it). Meant for a machine with one CUDA GPU and torch already installed;
# finishes within 9 minutes, so it fits a 15-minute lease with the machine's start.
#
#   bash scripts/gpu_check.sh            # OUT defaults to /tmp/gpu-check-out
#   bash scripts/gpu_check.sh bash scripts/warmup_study.sh   # any other command, same set-up, to study.txt
#   ANIMABOT_ENGINE__COMPILE_MODE=max-autotune-no-cudagraphs bash scripts/gpu_check.sh   # another compile mode
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
OUT="${OUT:-/tmp/gpu-check-out}"
BENCH_LIMIT_S="${BENCH_LIMIT_S:-500}"   # the bench plans for 450 s; this is the hard stop
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
start=$(date +%s)

{
    echo "== machine"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
} 2>&1 | tee "$OUT/env.txt"

# Install the carried wheels that are missing here or present at another version; numpy and pillow stay as
# the image has them when it has them, and torch is never carried. --no-deps: the folder holds the closure.
if compgen -G ".whl/*.whl" >/dev/null; then
    missing=$("$PY" - <<'EOF'
import glob, importlib.metadata as md
keep_any = {"numpy", "pillow"}
for path in sorted(glob.glob(".whl/*.whl")):
    name, wanted = path.rsplit("/", 1)[1].split("-")[:2]
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        print(path)
        continue
    if have != wanted and name.lower() not in keep_any:
        print(path)
EOF
)
    if [ -n "$missing" ]; then
        # Into a folder of their own, first on the path: the image's own environment stays untouched.
        SITE="${SITE:-/tmp/gpu-check-site}"
        # shellcheck disable=SC2086
        "$PY" -m pip install --quiet --no-deps --no-index --no-compile --no-cache-dir --upgrade \
            --disable-pip-version-check --target "$SITE" $missing 2>&1 | tee -a "$OUT/env.txt"
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
else
    echo "no .whl/ folder: using the packages already installed" | tee -a "$OUT/env.txt"
fi

"$PY" - 2>&1 <<'EOF' | tee -a "$OUT/env.txt"
import importlib
versions = []
for name in ("torch", "diffusers", "transformers", "accelerate", "huggingface_hub", "tokenizers",
             "safetensors", "numpy", "PIL"):
    try:
        versions.append(f"{name} {importlib.import_module(name).__version__}")
    except Exception as exc:
        versions.append(f"{name} MISSING ({type(exc).__name__}: {exc})")
print("== packages:", ", ".join(versions))
EOF

if [ "$#" -gt 0 ]; then   # another measurement in the same environment, e.g. scripts/warmup_study.py
    echo "== $* (hard stop ${BENCH_LIMIT_S} s)" | tee -a "$OUT/env.txt"
    timeout --signal=TERM --kill-after=15 "$BENCH_LIMIT_S" "$@" 2>&1 | tee "$OUT/study.txt"
    status=${PIPESTATUS[0]}
    echo "== exit code $status, whole check $(( $(date +%s) - start )) s" | tee -a "$OUT/study.txt"
    exit "$status"
fi

echo "== bench (hard stop ${BENCH_LIMIT_S} s)" | tee -a "$OUT/env.txt"
timeout --signal=TERM --kill-after=15 "$BENCH_LIMIT_S" \
    "$PY" -m engine bench --model random-full --repeat 3 2>&1 | tee "$OUT/bench.txt"
status=${PIPESTATUS[0]}
echo "== bench exit code $status, whole check $(( $(date +%s) - start )) s" | tee -a "$OUT/bench.txt"
exit "$status"
