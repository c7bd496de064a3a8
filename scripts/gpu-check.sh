#!/usr/bin/env bash
# The GPU check, in at most 8 minutes on one CUDA device: every CUDA test (pytest -m gpu), then the kernel
# benchmark (benchmarks/kernels.py: flex for the non-affine geometries and geoattn's sdpa for the affine ones,
# against F.scaled_dot_product_attention on FlashAttention in bf16 and on the memory-efficient kernel in fp32,
# where flash has no kernel; L = 2048 and 16384). Results go to benchmarks/results/gpu/ (committable):
#   env.txt                    nvidia-smi, python -m geoattn doctor
#   tests.txt                  the pytest -m gpu run (junit in tests.xml)
#   kernels-<dtype>-L<n>/      kernels.csv, kernels.png and log.txt of one benchmark process per dtype and L
#   summary.txt                each step's exit status and seconds (124: stopped at its time limit)
# Each step runs under `timeout` (tests 120 s, each benchmark process 80 s) within the overall budget, so a slow
# step costs its own results, not the rest's.
#
#   scripts/gpu-check.sh                 run it (PYTHON=... picks the interpreter; default .venv/bin/python)
#   scripts/gpu-check.sh --dry-run       print the steps without running anything
#   scripts/gpu-check.sh --help
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
OUT=${GPU_CHECK_OUT:-benchmarks/results/gpu}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
LENGTHS=(2048 16384)
# dtype, then the SDPA kernel it is compared against
DTYPES=("bfloat16 flash" "float32 efficient")
DRY=0

case "${1:-}" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "unknown option: $1 (use --dry-run or --help)" >&2; exit 2 ;;
esac

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GEOMSTATS_BACKEND=pytorch
START=$SECONDS

# step NAME LIMIT_S CMD...: runs CMD under timeout (at most LIMIT_S, and never past the overall budget)
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - (SECONDS - START)))
    ((limit > left)) && limit=$left
    if ((DRY)); then
        echo "[$name, ≤${limit}s] $*"
        return 0
    fi
    if ((limit < 10)); then
        echo "$name: skipped, the ${BUDGET_S}s budget is spent" | tee -a "$OUT/summary.txt"
        return 0
    fi
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    echo "$name: exit $rc, $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
    return 0
}

if ((!DRY)); then
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "no CUDA device visible to $PYTHON (torch.cuda.is_available() is False); nothing to check" >&2
        exit 2
    fi
    mkdir -p "$OUT"
    : > "$OUT/summary.txt"
    { nvidia-smi; "$PYTHON" -m geoattn doctor; } > "$OUT/env.txt" 2>&1
fi

step "tests (pytest -m gpu)" 120 bash -c \
    "$PYTHON -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml=$OUT/tests.xml > $OUT/tests.txt 2>&1"

for spec in "${DTYPES[@]}"; do
    read -r dtype kernel <<< "$spec"
    for L in "${LENGTHS[@]}"; do
        dir="$OUT/kernels-$dtype-L$L"
        ((DRY)) || mkdir -p "$dir"
        step "kernels $dtype L=$L vs $kernel" 80 bash -c \
            "$PYTHON -m benchmarks.kernels --device cuda --dtype $dtype --sdpa-kernel $kernel --lengths $L \
--backends flex sdpa --repeats 5 --out $dir > $dir/log.txt 2>&1"
    done
done

((DRY)) || echo "total $((SECONDS - START))s; results in $OUT" | tee -a "$OUT/summary.txt"
