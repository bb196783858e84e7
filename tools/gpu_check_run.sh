#!/usr/bin/env bash
# GPU check of `fabench run` (issue "fabench run", item 9): timm resnet18 on cifar10-mini for
# EPOCHS epochs under bp, fa-usf-sn and fa-usf-sn+const with bf16 autocast and channels_last,
# without and with --compile; prints each run's images/s in its last epoch (curves.csv, so
# warm-up and compilation are left out) and the ratio of each rule's step time to bp's in the
# same mode. All runs go in one call on one warm machine, so the ratios compare like with like.
#
# Usage: tools/gpu_check_run.sh          (a few minutes on one H100, most of it compiling)
# Env:   PY (python with fabench's dependencies; default .venv/bin/python or python3),
#        DEVICE (cuda), EPOCHS (2: the first includes warm-up and compilation), SUBSET (empty: all
#        5000 images), COMPILE ("off on"), RESULTS (/tmp/fabench-gpu-run), OUT (copy summary there).
#        DEVICE=cpu SUBSET=256 COMPILE=off EPOCHS=1 rehearses it on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-2}
COMPILE=${COMPILE:-"off on"}
RESULTS=${RESULTS:-/tmp/fabench-gpu-run}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" FABENCH_OFFLINE=1
[ "$DEVICE" = cpu ] || nvidia-smi -L 2>/dev/null || true
rm -rf "$RESULTS"
for mode in $COMPILE; do
  flag=""; [ "$mode" = on ] && flag="--compile"
  for rule in bp fa-usf-sn fa-usf-sn+const; do
    $PY -m fabench run --rule "$rule" --arch resnet18 --dataset cifar10-mini ${SUBSET:+--subset $SUBSET} \
      --epochs "$EPOCHS" --batch-size 256 --optimizer sgd --lr 0.05 --amp bf16 --channels-last $flag \
      --device "$DEVICE" --diagnostics off --task "gpu-check-compile-$mode" --results-dir "$RESULTS" --no-progress
  done
done
$PY - "$RESULTS" <<'PY' | tee "$RESULTS/summary.txt"
# images/s of each run's LAST epoch (curves.csv), so warm-up and compilation are left out
import csv, pathlib, sys
results = pathlib.Path(sys.argv[1])
rows = list(csv.DictReader(open(results / "runs.csv")))
def last_epoch_speed(row):
    curves = csv.DictReader(open(results / row["task"] / row["run_id"] / "curves.csv"))
    speeds = [(int(c["epoch"]), float(c["value"])) for c in curves if c["metric"] == "images_per_s"]
    return max(speeds)[1]
print("task\trule\tdevice\timages/s (last epoch)\tstep time / bp")
for task in sorted({r["task"] for r in rows}):
    mine = [r for r in rows if r["task"] == task]
    base = last_epoch_speed(next(r for r in mine if r["rule"] == "bp"))
    for r in mine:
        speed = last_epoch_speed(r)
        print(f"{task}\t{r['rule']}\t{r['device']}\t{speed:.0f}\t{base / speed:.3f}")
PY
[ -n "${OUT:-}" ] && cp "$RESULTS/summary.txt" "$OUT/" || true
