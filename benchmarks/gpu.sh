#!/usr/bin/env bash
# The GPU figures of issue 16, in one run of under 8 minutes on one GPU machine with no network.
#
#     bash benchmarks/gpu.sh OUT          # on a CUDA machine: random OPT-1.3B / OPT-13B, fp16
#     bash benchmarks/gpu.sh --tiny OUT   # on any CPU, in a minute or two: the same parts on
#                                         # random:tiny-opt in float32 (tests/test_gpu_script.py)
#
# What it measures (every model is randomly initialised from a shape in
# zotune.models.random_shapes.SHAPES, built directly on the GPU in fp16: nothing is downloaded):
#   part 1  `zotune profile` of random OPT-1.3B, fp16, B16 T64: inference and the eight
#           optimizers × four schemes (full, LoRA, prefix, prompt), peak memory and s/step,
#           the paper's memory/time table (one zotune process per scheme, so one failing
#           scheme leaves the others);
#   part 2  `zotune profile --step-cost` on the same shape: a ZO-SGD step against two
#           forwards and against the MeZO-style step (CUDA tensors draw Gaussian directions,
#           zotune's `auto`). Targets: T_step ≤ 1.05 × 2 T_fwd, ≥ 2× faster than MeZO-style;
#   part 3  inference and ZO-SGD memory of random OPT-13B, fp16, one 400-token example
#           (MeZO reports 26 GB on one A100);
#   part 4  ZO-SGD on the same OPT-13B shape with its weights offloaded to CPU memory
#           (`zotune profile --offload`: accelerate's cpu_offload, the CPU copies moved in place
#           with table directions), s/step against resident.
# Memory on CUDA is bytes allocated by torch (weights + the step's peak over them), without
# the CUDA context or the allocator's cache.
#
# Each part runs under its own `timeout`, bounded by what the whole run has left (about 465 s
# in all: later parts keep a reserve), and the run goes on past a part that fails or times
# out; README.md's status table says which did. Within a part, a measurement that fails is
# listed and skipped (`--keep-going`); on a CPU, random:tiny-opt in fp16 measures all 36
# (Adam's moments are kept in fp32, and Forward-Grad runs LayerNorm in fp32 under fp16, whose
# JVP overflowed at the init scale). A part's JSON is written when it ends and
# README.md after every part, so a run cut short keeps the parts before it.
#
# The run needs what the GPU image has (python3 with torch, transformers, peft, accelerate,
# tokenizers, safetensors, pyyaml, numpy); zotune runs from this checkout's src/ and the
# versions are checked first (part 0). Wheels for anything missing can travel in .whl/ (named
# in the device tool's `carry`); they are installed into a temporary folder, never from an
# index. PYTHON overrides the interpreter (default python3).
#
# It writes 7 files into OUT (the device tool brings back at most 8):
#   README.md          status of each part, the headline figures, then each part's page
#   gpu.log            everything every part printed
#   environment.json   python, package versions, GPU, the zotune it imported
#   part1-profile.json, part2-step-cost.json, part3-memory.json, part4-offload.json
#                      `zotune profile --json` results (part 1's four schemes merged; each
#                      re-renders with `zotune profile --from-json FILE`, part 2 excepted)
#
# On the device tool (one call; timeout_s 540 leaves room over the run's ~465 s):
#     run(command='bash benchmarks/gpu.sh "$OUT"', timeout_s=540)
# Then commit the files it brought back under docs/results/gpu-<kind>/ (gpu-h100 or gpu-h200,
# after the reply's device), with the GPU named as README.md's first lines name it, and replace
# this script's "not run yet" row in docs/results/README.md by a link to that README.md.
set -u -o pipefail

usage() { echo "usage: bash benchmarks/gpu.sh [--tiny] OUT" >&2; exit 2; }
TINY=0
OUT=""
for arg in "$@"; do
    case "$arg" in
        --tiny) TINY=1 ;;
        -h|--help) usage ;;
        -*) echo "gpu.sh: unknown option $arg" >&2; usage ;;
        *) [ -z "$OUT" ] || usage; OUT="$arg" ;;
    esac
done
[ -n "$OUT" ] || usage
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/zotune-gpu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT/gpu.log"
STATUS="$WORK/status.tsv"
: >"$LOG"
: >"$STATUS"

if [ "$TINY" = 1 ]; then
    MODE=tiny DEVICE=cpu DTYPE=float32 SMALL=random:tiny-opt BIG=random:tiny-opt
    P1_SCHEMES="full lora" P1_OPTIMIZERS=(--optimizers inference,zo-sgd,fo-adam)
    P1_SHAPE=(--batch-size 2 --seq-len 16) P2_SCHEMES=full THREADS=(--threads 1)
    BUDGET=300 CAP0=120 CAP1=150 CAP1_SCHEME=90 CAP2=90 CAP3=90 CAP4=120
    export OMP_NUM_THREADS=1  # tiny models crawl on two threads of a busy machine
else
    MODE=gpu DEVICE=cuda DTYPE=float16 SMALL=random:opt-1.3b BIG=random:opt-13b
    P1_SCHEMES="full lora prefix prompt" P1_OPTIMIZERS=() P1_SHAPE=(--batch-size 16 --seq-len 64)
    P2_SCHEMES=full,lora,prefix,prompt THREADS=()
    BUDGET=465 CAP0=60 CAP1=190 CAP1_SCHEME=75 CAP2=100 CAP3=100 CAP4=300
fi
# What each later part keeps of the budget when an earlier one starts.
RESERVE2=45 RESERVE3=45 RESERVE4=90

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
SITE=""
if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$REPO"/.whl/*.whl 2>&1 | tee -a "$LOG" && SITE="$WORK/site:"
fi
export PYTHONPATH="$REPO/src:$SITE${PYTHONPATH:-}"
ZOTUNE=("$PYTHON" -m zotune)
REPORT=("$PYTHON" "$REPO/benchmarks/gpu_report.py")

say() { echo "gpu.sh: $*" | tee -a "$LOG"; }
# README.md from what is there so far: rewritten after every part, so a run cut short keeps one.
report() {
    "${REPORT[@]}" readme --out "$OUT" --status "$STATUS" --work "$WORK" --mode "$MODE" \
        >>"$LOG" 2>&1
}

# limit_for CAP RESERVE: seconds a part may run, CAP at most, leaving RESERVE for the parts
# after it; 0 when less than 20 s would be left.
limit_for() {
    local left=$((BUDGET - SECONDS - $2))
    local limit=$(($1 < left ? $1 : left))
    echo $((limit < 20 ? 0 : limit))
}

# run_part ID NAME LIMIT KEEP COMMAND...: run it under `timeout LIMIT`, log it, record its
# status, copy the file KEEP it wrote (if any; "-" for none) into OUT, rewrite README.md.
run_part() {
    local id=$1 name=$2 limit=$3 keep=$4 start=$SECONDS rc status
    shift 4
    if [ "$limit" -le 0 ]; then
        say "part $id ($name): skipped, no time left"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$name" "skipped: no time left" 0 0 "$*" >>"$STATUS"
        report
        return 1
    fi
    say "part $id ($name): limit ${limit}s: $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=ok ;;
        1) status="partial: some measurements failed" ;;  # zotune profile --keep-going
        124|137) status="timed out" ;;
        *) status="failed (exit $rc)" ;;
    esac
    say "part $id ($name): $status after $((SECONDS - start))s"
    [ "$keep" != - ] && [ -f "$keep" ] && cp "$keep" "$OUT/"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$name" "$status" $((SECONDS - start)) "$limit" \
        "$*" >>"$STATUS"
    report
    [ "$rc" = 0 ]
}

say "mode $MODE, output $OUT, repository $REPO, budget ${BUDGET}s, $(date -u +%FT%TZ)"
command -v nvidia-smi >/dev/null && nvidia-smi 2>&1 | tee -a "$LOG"

# Part 0: the interpreter, the packages, and the zotune this checkout holds.
REQUIRE=()
[ "$MODE" = gpu ] && REQUIRE=(--require-cuda)
if ! run_part 0 "environment" "$(limit_for "$CAP0" $((RESERVE2 + RESERVE3 + RESERVE4 + 60)))" - \
    "${REPORT[@]}" environment --repo "$REPO" --out "$OUT/environment.json" "${REQUIRE[@]}"; then
    say "the environment check failed: nothing else can run"
    exit 1
fi

# In one process: on CUDA the readings are torch's allocated bytes, exact whatever ran before
# (one process per measurement would spend most of the budget importing torch).
COMMON=(--dtype "$DTYPE" --device "$DEVICE" --no-isolate --keep-going "${THREADS[@]}")

# The parts write into WORK under plain names (their pages show the commands as run there),
# and each JSON is copied into OUT as soon as its part ends (run_part's KEEP).
cd "$WORK" || exit 2

# Part 1: one zotune process per scheme, within the part's share of the budget.
P1_END=$((SECONDS + $(limit_for "$CAP1" $((RESERVE2 + RESERVE3 + RESERVE4)))))
for scheme in $P1_SCHEMES; do
    left=$((P1_END - SECONDS))
    run_part 1 "profile $scheme" $((left < CAP1_SCHEME ? left : CAP1_SCHEME)) - \
        "${ZOTUNE[@]}" profile --model "$SMALL" "${P1_OPTIMIZERS[@]}" --schemes "$scheme" \
        "${P1_SHAPE[@]}" "${COMMON[@]}" --json "profile-$scheme.json" \
        --markdown "profile-$scheme.md" \
        --note "gpu.sh part 1: the memory/time table of the paper, scheme $scheme"
done
profiles=(profile-*.json)
if [ -e "${profiles[0]}" ]; then
    "${REPORT[@]}" merge-profile --out "$OUT/part1-profile.json" "${profiles[@]}" 2>&1 \
        | tee -a "$LOG"
    report
fi

# Part 2: the step cost, every scheme, memory measured in this process (exact on CUDA).
run_part 2 "step cost" "$(limit_for "$CAP2" $((RESERVE3 + RESERVE4)))" part2-step-cost.json \
    "${ZOTUNE[@]}" profile --step-cost --model "$SMALL" --schemes "$P2_SCHEMES" \
    "${P1_SHAPE[@]}" "${COMMON[@]}" --json part2-step-cost.json --markdown part2.md

# Part 3: OPT-13B memory at one 400-token example.
run_part 3 "13B memory" "$(limit_for "$CAP3" "$RESERVE4")" part3-memory.json \
    "${ZOTUNE[@]}" profile --model "$BIG" --optimizers inference,zo-sgd \
    --batch-size 1 --seq-len 400 "${COMMON[@]}" --json part3-memory.json \
    --markdown part3.md --note "gpu.sh part 3: MeZO reports 26 GB for ZO-SGD on OPT-13B, one A100"

# Part 4: the same shape with its weights offloaded to CPU memory; the slowest part, last.
# One timed step (the peak step and one untimed step run before it): an offloaded OPT-13B
# step copies 26 GB to the GPU twice and moves 13B CPU values three times.
run_part 4 "13B offload" "$(limit_for "$CAP4" 0)" part4-offload.json \
    "${ZOTUNE[@]}" profile --model "$BIG" --optimizers zo-sgd --offload \
    --batch-size 1 --seq-len 400 --warmup 0 --steps 1 "${COMMON[@]}" \
    --json part4-offload.json --markdown part4.md \
    --note "gpu.sh part 4: ZO-SGD with CPU-offloaded weights against resident"

command -v nvidia-smi >/dev/null && nvidia-smi 2>&1 | tee -a "$LOG"
report
failed=$(awk -F'\t' '$3 != "ok"' "$STATUS" | wc -l)
say "done in ${SECONDS}s; $failed part run(s) not ok"
[ "$failed" = 0 ]
