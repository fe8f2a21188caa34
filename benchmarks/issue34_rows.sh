#!/usr/bin/env bash
# Issue 34's remaining figures in one run on a quiet CPU machine (about 20 minutes on the
# project's 2-core Xeon):
#
#     bash benchmarks/issue34_rows.sh OUT          # SmolLM2-135M shape, B16 T48, 2 threads,
#                                                  # then `zotune demo` on one core
#     bash benchmarks/issue34_rows.sh --tiny OUT   # the same parts on random:tiny-llama and a
#                                                  # 2-step tiny training run (a few minutes)
#
#   part 1  `zotune profile --step-cost --dtype DTYPES --matmul MATMUL --compile --schemes full`:
#           each ZO step
#           (ZO-SGD, ZO-SGD-MMT, ZO-Adam; OPTIMIZERS picks others) against two forwards, eager
#           and with the forward compiled (`zotune.compile_model`), the compile time, the
#           compiled step over the eager one and the steps it takes to win the compile time
#           back. The compile runs against an empty inductor cache (what a first run pays).
#           Targets: bf16 ZO-SGD step ≤ 1.10 × 2F, ZO-SGD-MMT and ZO-Adam ≤ 1.3 × 2F, compiled
#           bf16 ZO-SGD step ≤ 0.75 × the eager one.
#   part 2  `zotune demo` (the `make demo` recipe) pinned to one core with one thread
#           (`taskset -c 0`, OMP_NUM_THREADS=1): wall time and its accuracies; its run folder
#           is written under a temporary folder, not into the checkout.
#   summary whether each target holds, and whether `--compile` would pay off in the demo
#           (its compile time against 250 steps' savings; the demo's evaluations are not
#           counted, so the call errs towards eager).
#
# Files in OUT (which must not exist yet; written into OUT.partial and renamed when done):
#   README.md          the summary: targets, demo wall time and accuracies, the decision,
#                      the commands and the machine
#   summary.json       the same as data
#   step-cost.md/.json part 1's table and rows as `zotune profile --step-cost` writes them
#   step-cost.log      part 1's progress and printed table
#   demo.log           part 2's output; demo-result.json: the demo run's result.json
#
# Environment: ZOTUNE (the command, default `zotune`), PYTHON (default python3),
# DTYPES (default bfloat16; e.g. float32,bfloat16 adds the fp32 rows, +5 minutes),
# OPTIMIZERS (default zo-sgd,zo-sgd-mmt,zo-adam; add mezo-ref for the MeZO-style reference
# step, slow in bf16: several minutes more),
# MATMUL (part 1's model.matmul modes, default native,float32: bf16 products native and in
# fp32 side by side; auto gives one row of what this CPU picks),
# THREADS (part 1, default 2), STEPS (part 1's timed rounds, default 5), SKIP_DEMO=1.
# ZOTUNE_DATA_DIR must name the task data when the machine has no network.
set -euo pipefail

tiny=0
if [[ "${1:-}" == "--tiny" ]]; then tiny=1; shift; fi
if [[ $# -ne 1 ]]; then
  echo "usage: bash benchmarks/issue34_rows.sh [--tiny] OUT" >&2
  exit 2
fi
out=$1
if [[ -e "$out" ]]; then
  echo "issue34_rows: $out exists; give a new folder (nothing is overwritten)" >&2
  exit 2
fi
ZOTUNE=${ZOTUNE:-zotune}
PYTHON=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
# Both parts run in other folders (the results', a temporary one): relative paths go absolute.
absolute() { "$PYTHON" -c 'import os, sys; print(os.pathsep.join(os.path.abspath(p) if p else p for p in sys.argv[1].split(os.pathsep)))' "$1"; }
[[ -n "${PYTHONPATH:-}" ]] && export PYTHONPATH=$(absolute "$PYTHONPATH")
[[ -n "${ZOTUNE_DATA_DIR:-}" ]] && export ZOTUNE_DATA_DIR=$(absolute "$ZOTUNE_DATA_DIR")
[[ "$ZOTUNE" == */* ]] && ZOTUNE=$(absolute "$ZOTUNE")
command -v taskset >/dev/null || { echo "issue34_rows: taskset not found (util-linux)" >&2; exit 2; }

if [[ $tiny == 1 ]]; then
  model=random:tiny-llama batch=2 seq=8 steps=${STEPS:-1} warmup=0
else
  model=random:smollm2-135m batch=16 seq=48 steps=${STEPS:-5} warmup=1
fi
dtypes=${DTYPES:-bfloat16}
matmul=${MATMUL:-native,float32}
optimizers=${OPTIMIZERS:-zo-sgd,zo-sgd-mmt,zo-adam}
threads=${THREADS:-2}
partial="$out.partial"
rm -rf "$partial"
mkdir -p "$partial"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
start=$(date +%s)
say() { echo "issue34_rows [$(( $(date +%s) - start )) s]: $*" >&2; }

say "part 1/2: step cost of $model B$batch T$seq, $dtypes, eager and compiled, $threads threads"
profile=("$ZOTUNE" profile --step-cost --model "$model" --batch-size "$batch" --seq-len "$seq"
         --threads "$threads" --steps "$steps" --warmup "$warmup" --dtype "$dtypes" --matmul "$matmul" --compile
         --schemes full --optimizers "$optimizers" --json step-cost.json --markdown step-cost.md
         --note "Compiled against an empty inductor cache (TORCHINDUCTOR_CACHE_DIR in a fresh folder).")
# In the results' folder, so the command the page records names its files as they end up.
(cd "$partial" && OMP_NUM_THREADS=$threads TORCHINDUCTOR_CACHE_DIR="$scratch/inductor" \
  "${profile[@]}") 2>&1 | tee "$partial/step-cost.log"
say "part 1 done"

demo_seconds=""
if [[ "${SKIP_DEMO:-0}" != 1 ]]; then
  if [[ $tiny == 1 ]]; then
    demo=("$ZOTUNE" train --model random:tiny-llama --dtype bfloat16 --task sst2 --num-train 16
          --num-val 4 --num-test 8 --tuning full --optimizer zo-sgd --lr 3e-5 --eps 1e-3
          --steps 2 --batch-size 2 --eval-every 2 --eval-test-before --output-dir runs/demo-1)
  else
    demo=("$ZOTUNE" demo)
  fi
  say "part 2/2: ${demo[*]} on one core (taskset -c 0, one thread), in $scratch"
  demo_start=$(date +%s%N)
  (cd "$scratch" && OMP_NUM_THREADS=1 taskset -c 0 "${demo[@]}") 2>&1 | tee "$partial/demo.log"
  demo_ms=$(( ($(date +%s%N) - demo_start) / 1000000 ))
  demo_seconds=$(( demo_ms / 1000 )).$(printf %03d $(( demo_ms % 1000 )))
  cp "$scratch"/runs/demo-1/result.json "$partial/demo-result.json"
  say "part 2 done: ${demo_seconds} s"
fi

PYTHONPATH=${PYTHONPATH:-} "$PYTHON" "$here/issue34_summary.py" "$partial" \
  --demo-seconds "${demo_seconds:-nan}" --demo-command "OMP_NUM_THREADS=1 taskset -c 0 ${demo[*]:-}" \
  --script "bash benchmarks/issue34_rows.sh $([[ $tiny == 1 ]] && echo '--tiny ')$out"
mv "$partial" "$out"
say "wrote $out (README.md, summary.json, step-cost.md/.json/.log$([[ -n $demo_seconds ]] && echo ', demo.log, demo-result.json'))"
cat "$out/README.md"
