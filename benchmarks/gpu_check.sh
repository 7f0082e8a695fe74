#!/usr/bin/env bash
# The first run on a GPU machine: does the toolkit run there, give the CPU's numbers, and how fast?
#
#   bash benchmarks/gpu_check.sh OUT_DIR                 # on the GPU machine, under 8 minutes
#   bash benchmarks/gpu_check.sh OUT_DIR --cpu-dry-run   # the same stages on a CPU, tiny sizes
#   OUT=/some/dir bash benchmarks/gpu_check.sh           # OUT_DIR from $OUT
#
# Needs a Python with JAX (JAX[cuda] on a GPU) and the package's dependencies; it downloads
# nothing: it runs `pip install --no-deps -e .` offline and, should that fail, runs the package
# from this source tree (PYTHONPATH). Torch is optional: with it, eager PyTorch is timed too.
# It only reads the accelerator's state (nvidia-smi); it never resets or reconfigures it.
#
# Stages, each under its own `timeout` and all within one time budget ($GPU_CHECK_BUDGET_S,
# default 480 s; 600 s for the dry run, which two busy cores may need), each writing its
# results into OUT_DIR as it finishes:
#   install        pip install --no-deps -e . (skipped in the dry run: it would repoint your
#                  environment's install at this tree)
#   devices        nvidia-smi and jax.devices() -> nvidia-smi.txt, devices.json
#   smoke_compare  the smoke preset for 30 steps on the GPU (float32 matrix products:
#                  JAX_DEFAULT_MATMUL_PRECISION=highest) and on the CPU (JAX_PLATFORMS=cpu),
#                  side by side; benchmarks/compare_records.py compares their probe and metric
#                  records -> compare.json (the verdict), and the same on the GPU at JAX's
#                  default precision (TF32 matrix products) -> compare_default_precision.json
#                  (for information). Dry run: 4 steps of the BatchNorm network, the
#                  accelerator's code paths (XLA's convolution, a vmap probe) on the CPU against
#                  the CPU's own.
#   paper_short, paper_long
#                  `landscape probe --preset paper --probe-every 1` for 30 and 300 steps, timed
#                  -> paper_runs.jsonl (dry run: the smoke preset, 2 and 6 steps)
#   extrapolate    the paper protocol's wall time (its step count and variants from the paper
#                  preset) from those two runs -> paper_protocol.json
#   bench          `landscape bench --preset paper` -> bench/bench.jsonl (dry run: smoke, tiny)
#   shared_short, shared_long, shared_extrapolate
#                  the same two runs with both variants at once, each in its own process sharing
#                  the GPU (`landscape sweep --grid variant=standard,batchnorm --parallel 2
#                  --oversubscribe`), and the protocol's wall time that way
#                  -> paper_runs.jsonl, paper_protocol_shared.json (dry run: 2 and 4 steps)
#   torch          eager PyTorch against ours on the paper network, same weights and batch, both
#                  on the GPU (benchmarks/compare_torch.py --device cuda), when the machine's
#                  Python has torch with CUDA; else skipped and said so -> torch_vs_jax.jsonl
#                  (dry run: the smoke network, both on the CPU, when torch is installed)
#   peers          the JAX rows of benchmarks/peers.py (curvature and surfaces) -> peers.jsonl
# and finally summary.json. Exit status: 0 when every stage that started finished and the
# records agree (stages the budget left no time for are listed as skipped), 1 when not, 2 on
# bad arguments, 3 when JAX is missing or (without --cpu-dry-run) sees no GPU.
#
# Data: the probe runs use real CIFAR-10 when $LANDSCAPE_CIFAR_JPEG names the JPEG archive, or
# when data/ (git-ignored) holds cifar10-jpeg.tar.gz or cifar-10-binary.tar.gz; otherwise
# synthetic data of the same shape (speed does not depend on the pixels), and the output says so.
# The smoke comparison always uses the smoke preset's synthetic data.
set -u -o pipefail

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-}
DRY=0
for arg in "$@"; do
    case $arg in
        --cpu-dry-run) DRY=1 ;;
        -h | --help) usage ;;
        -*) echo "gpu_check: unknown option $arg (try --help)" >&2; exit 2 ;;
        *) OUT=$arg ;;
    esac
done
if [ -z "$OUT" ]; then
    echo "gpu_check: give the output folder: bash benchmarks/gpu_check.sh OUT_DIR [--cpu-dry-run]" >&2
    exit 2
fi
mkdir -p "$OUT" || { echo "gpu_check: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python}
command -v "$PY" > /dev/null 2>&1 || PY=python3
MODE=gpu
[ "$DRY" = 1 ] && MODE=cpu-dry-run
if [ "$DRY" = 1 ]; then BUDGET=${GPU_CHECK_BUDGET_S:-600}; else BUDGET=${GPU_CHECK_BUDGET_S:-480}; fi
RESERVE=15 # seconds kept for the summary
START=$EPOCHREALTIME

# The package from this tree whether or not the install below works; no persistent compilation
# cache, so every run compiles as a user's first one does and nothing is written outside OUT_DIR
# (the dry run, which times nothing that counts, shares one inside OUT_DIR between its stages,
# which compile the same programs); wide lines, so the per-variant timings `landscape probe`
# prints stay on one line each.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export LANDSCAPE_JAX_CACHE=0 COLUMNS=200
[ "$DRY" = 1 ] && export LANDSCAPE_JAX_CACHE="$OUT/jax-cache"
export OUT PY DRY REPO
cd "$REPO" || exit 2
: > "$OUT/stages.jsonl"

elapsed() { awk -v a="$START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", b - a }'; }
say() { echo "[gpu_check $(elapsed)s] $*" | tee -a "$OUT/gpu_check.log"; }

finish() {
    "$PY" benchmarks/gpu_check.py summary "$OUT" --mode "$MODE" --data-note "$DATA_NOTE" \
        2>&1 | tee -a "$OUT/gpu_check.log"
    exit "${1:-${PIPESTATUS[0]}}"
}

# stage NAME CAP_S FUNCTION: runs FUNCTION under `timeout`, for at most CAP_S seconds and never
# past the budget; its output goes to OUT/NAME.log; one line per stage in OUT/stages.jsonl.
stage() {
    local name=$1 cap=$2 fn=$3 left limit status rc t0 seconds
    left=$((BUDGET - RESERVE - $(elapsed)))
    limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 5 ]; then
        say "$name: skipped, the time budget ($BUDGET s) is spent"
        printf '{"stage": "%s", "status": "skipped", "rc": null, "seconds": 0, "limit_s": 0}\n' \
            "$name" >> "$OUT/stages.jsonl"
        return 1
    fi
    say "$name: starting (at most $limit s)"
    t0=$EPOCHREALTIME
    timeout --kill-after=10 "$limit" bash -c "$fn" > "$OUT/$name.log" 2>&1
    rc=$?
    seconds=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    printf '{"stage": "%s", "status": "%s", "rc": %d, "seconds": %s, "limit_s": %d}\n' \
        "$name" "$status" "$rc" "$seconds" "$limit" >> "$OUT/stages.jsonl"
    say "$name: $status in $seconds s (log: $OUT/$name.log)"
    if [ "$status" != ok ]; then tail -n 5 "$OUT/$name.log" | sed 's/^/    /'; fi
    return "$rc"
}

# --- data ---------------------------------------------------------------------------------------
DATA=synthetic
DATA_NOTE="synthetic data of CIFAR-10's shape (no \$LANDSCAPE_CIFAR_JPEG and no archive in data/; speed does not depend on the pixels)"
if [ -n "${LANDSCAPE_CIFAR_JPEG:-}" ] && [ -e "$LANDSCAPE_CIFAR_JPEG" ]; then
    DATA=$LANDSCAPE_CIFAR_JPEG
    DATA_NOTE="real CIFAR-10 from \$LANDSCAPE_CIFAR_JPEG ($DATA)"
else
    for candidate in data/cifar10-jpeg.tar.gz data/cifar-10-binary.tar.gz; do
        if [ -e "$candidate" ]; then
            DATA=$REPO/$candidate
            DATA_NOTE="real CIFAR-10 from $candidate"
            break
        fi
    done
fi
[ "$DRY" = 1 ] && DATA=synthetic DATA_NOTE="synthetic (dry run)"
export DATA
say "mode $MODE, budget $BUDGET s, output $OUT"
say "data: $DATA_NOTE"

if ! "$PY" -c "import jax" > "$OUT/import_jax.log" 2>&1; then
    say "no JAX in $PY ($(tail -n 1 "$OUT/import_jax.log")): install JAX[cuda] first; nothing else was run"
    printf '{"stage": "devices", "status": "failed", "rc": 3, "seconds": 0, "limit_s": 0}\n' \
        >> "$OUT/stages.jsonl"
    finish 3
fi

# --- stages -------------------------------------------------------------------------------------
install_stage() {
    if [ "$DRY" = 1 ]; then
        echo "dry run: not installing (it would repoint this environment's landscape at this tree)"
        return 0
    fi
    # Offline: without an index pip cannot fetch a build backend, so first try the one installed.
    "$PY" -m pip install --no-deps --no-index --no-build-isolation -e . ||
        "$PY" -m pip install --no-deps --no-index -e . ||
        { echo "pip install --no-deps -e . failed: running the package from the source tree (PYTHONPATH)"; }
    "$PY" -c "import landscape, sys; print('landscape from', landscape.__file__)"
}

devices_stage() {
    if [ "$DRY" = 0 ]; then
        nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed or is missing" >> "$OUT/nvidia-smi.txt"
        cat "$OUT/nvidia-smi.txt"
    fi
    "$PY" benchmarks/gpu_check.py devices "$OUT/devices.json"
}

smoke_compare_stage() {
    local steps=30 pids=() rc=0
    [ "$DRY" = 1 ] && steps=4
    local args=(-m landscape probe --preset smoke --steps "$steps" --no-figures --no-progress --overwrite)
    # The dry run compares one variant: the comparison does not depend on which.
    [ "$DRY" = 1 ] && args+=(--variants batchnorm)
    if [ "$DRY" = 1 ]; then
        JAX_PLATFORMS=cpu "$PY" "${args[@]}" --conv-impl xla --probe-strategy vmap \
            --out "$OUT/smoke_accel" > "$OUT/smoke_accel.log" 2>&1 &
        pids+=($!)
    else
        # Both GPU runs share the device: no process may take most of its memory up front.
        XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest \
            "$PY" "${args[@]}" --out "$OUT/smoke_gpu" > "$OUT/smoke_gpu.log" 2>&1 &
        pids+=($!)
        XLA_PYTHON_CLIENT_PREALLOCATE=false \
            "$PY" "${args[@]}" --out "$OUT/smoke_gpu_default" > "$OUT/smoke_gpu_default.log" 2>&1 &
        pids+=($!)
    fi
    JAX_PLATFORMS=cpu "$PY" "${args[@]}" --out "$OUT/smoke_cpu" > "$OUT/smoke_cpu.log" 2>&1 &
    pids+=($!)
    for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
    tail -n 3 "$OUT"/smoke_*.log
    if [ "$rc" != 0 ]; then
        echo "a smoke run failed (exit $rc)"
        return "$rc"
    fi
    local checked=smoke_gpu
    [ "$DRY" = 1 ] && checked=smoke_accel
    "$PY" benchmarks/compare_records.py "$OUT/$checked" "$OUT/smoke_cpu" --out "$OUT/compare.json"
    rc=$?
    if [ "$DRY" = 0 ]; then
        echo "for information, at JAX's default GPU precision:"
        "$PY" benchmarks/compare_records.py "$OUT/smoke_gpu_default" "$OUT/smoke_cpu" \
            --out "$OUT/compare_default_precision.json"
    fi
    return "$rc"
}

paper_run() { # NAME STEPS
    local preset=paper
    [ "$DRY" = 1 ] && preset=smoke
    "$PY" benchmarks/gpu_check.py timed "$1" "$2" "$OUT/paper_runs.jsonl" -- \
        "$PY" -m landscape probe --preset "$preset" --data "$DATA" --steps "$2" --probe-every 1 \
        --no-figures --no-progress --overwrite --out "$OUT/paper_$1"
    local rc=$?
    rm -rf "$OUT/paper_$1"/*/checkpoints # a full-width checkpoint is 37 MB; the records stay
    return "$rc"
}
paper_short_stage() { if [ "$DRY" = 1 ]; then paper_run short 2; else paper_run short 30; fi; }
paper_long_stage() { if [ "$DRY" = 1 ]; then paper_run long 6; else paper_run long 300; fi; }

extrapolate_stage() {
    local preset=paper
    [ "$DRY" = 1 ] && preset=smoke
    "$PY" benchmarks/gpu_check.py extrapolate "$OUT" --preset "$preset" --short short --long long
}

# A small network leaves a large GPU idle between its kernels: two variants at once, each in its
# own worker process, may finish the protocol sooner than one after the other.
shared_run() { # NAME STEPS
    local preset=paper gpu=${CUDA_VISIBLE_DEVICES:-0}
    [ "$DRY" = 1 ] && preset=smoke
    # A sweep skips the runs it finds finished: start from nothing, so every step is timed.
    rm -rf "$OUT/paper_$1"
    # One GPU for both workers, also on a machine with several (the point is the sharing); each
    # worker's log carries its variant's timing line, the marginal rate's source.
    CUDA_VISIBLE_DEVICES=${gpu%%,*} "$PY" benchmarks/gpu_check.py timed \
        --logs "$OUT/paper_$1/logs/*.log" "$1" "$2" "$OUT/paper_runs.jsonl" -- \
        "$PY" -m landscape sweep --preset "$preset" --data "$DATA" --steps "$2" --probe-every 1 \
        --grid variant=standard,batchnorm --parallel 2 --oversubscribe --no-progress \
        --out "$OUT/paper_$1"
    local rc=$?
    find "$OUT/paper_$1" -type d -name checkpoints -prune -exec rm -rf {} + # the records stay
    return "$rc"
}
shared_short_stage() { local n=30; [ "$DRY" = 1 ] && n=2; shared_run shared_short "$n"; }
shared_long_stage() { local n=300; [ "$DRY" = 1 ] && n=4; shared_run shared_long "$n"; }
shared_extrapolate_stage() {
    local preset=paper
    [ "$DRY" = 1 ] && preset=smoke
    "$PY" benchmarks/gpu_check.py extrapolate "$OUT" --preset "$preset" --short shared_short \
        --long shared_long --to paper_protocol_shared.json --concurrent
}

torch_stage() {
    if ! "$PY" -c "import torch" > /dev/null 2>&1; then
        echo "torch is not installed in $PY: eager PyTorch not measured"
        return 0
    fi
    if [ "$DRY" = 1 ]; then
        "$PY" benchmarks/compare_torch.py --preset smoke --variant batchnorm --repeats 1 \
            --out "$OUT/torch_vs_jax.jsonl"
        return $?
    fi
    if ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        echo "torch sees no CUDA device: eager PyTorch on the GPU not measured"
        return 0
    fi
    # Both frameworks share the GPU: neither may take most of its memory up front.
    local variant rc=0
    for variant in batchnorm standard; do
        XLA_PYTHON_CLIENT_PREALLOCATE=false "$PY" benchmarks/compare_torch.py --preset paper \
            --variant "$variant" --data "$DATA" --device cuda --cudnn-benchmark --repeats 5 \
            --out "$OUT/torch_vs_jax.jsonl" || rc=$?
    done
    return "$rc"
}

bench_stage() {
    if [ "$DRY" = 1 ]; then
        "$PY" -m landscape bench --preset smoke --strategies map --repeats 1 --run-steps 0 \
            --out "$OUT/bench"
    else
        # vmap is the accelerator's default strategy and map the CPU's; the unrolled probe is
        # never chosen on a GPU and compiles longest.
        "$PY" -m landscape bench --preset paper --strategies vmap,map --repeats 3 --run-steps 10 \
            --out "$OUT/bench"
    fi
}

peers_stage() {
    if [ "$DRY" = 1 ]; then
        "$PY" benchmarks/peers.py --jax-only --network smoke --settings bn-train --train-steps 2 --rounds 1 \
            --grid 3 --probes 4 --reference-iters 8 --power-iters 10 --out "$OUT/peers.jsonl"
    else
        "$PY" benchmarks/peers.py --jax-only --data "$DATA" --rounds 2 --out "$OUT/peers.jsonl"
    fi
}

export -f install_stage devices_stage smoke_compare_stage paper_run paper_short_stage \
    paper_long_stage extrapolate_stage shared_run shared_short_stage shared_long_stage \
    shared_extrapolate_stage torch_stage bench_stage peers_stage

stage install 90 install_stage
if ! stage devices 60 devices_stage; then
    say "JAX cannot list its devices: stopping"
    finish 3
fi
if [ "$DRY" = 0 ] && ! grep -q '"backend": "gpu"' "$OUT/devices.json"; then
    backend=$(sed -n 's/.*"backend": "\([^"]*\)".*/\1/p' "$OUT/devices.json")
    say "JAX sees no GPU (its backend is ${backend:-unknown}): stopping; --cpu-dry-run checks a CPU"
    finish 3
fi
# Most important first: a stage the budget cuts short is reported as such in summary.json.
stage smoke_compare 150 smoke_compare_stage
stage paper_short 120 paper_short_stage
stage paper_long 180 paper_long_stage && stage extrapolate 30 extrapolate_stage
stage bench 120 bench_stage
stage shared_short 120 shared_short_stage && stage shared_long 150 shared_long_stage &&
    stage shared_extrapolate 30 shared_extrapolate_stage
# Measured on the H200 already (docs/performance.md): last, so a tight budget skips these first
# (a skipped stage is reported, and does not fail the check).
stage torch 120 torch_stage
stage peers 120 peers_stage
finish
