#!/usr/bin/env bash
# GPU check of one run over several GPUs (fabench.train.distributed, DDP launched by torchrun).
#
# For each rule: one process on one GPU, then (when the machine has G > 1 GPUs) G processes,
# one per GPU, on the same global batch. Prints images/s per rule and world size (median of
# the epochs after the first, from each run's curves.csv) and the final top-1. With G > 1 it also
# trains arch1 (no BatchNorm) for 4 steps on 1 and on G GPUs and prints the largest weight
# difference, which should be small beside the weights (summation order; cuDNN may use TF32).
#
# Usage: tools/gpu_check_ddp.sh            (about 2-4 minutes on one H100; more with several GPUs)
# Env:   PY (python with torch, typer, timm; default .venv/bin/python or python3),
#        RULES (default "bp fa-usf-sn+const dfa"), ARCH (resnet20), EPOCHS (4), BATCH (256, global),
#        RESULTS (run folders, default /tmp/fabench-gpu-ddp), OUT (if set: summary.txt and logs copied there),
#        DEVICE=cpu GPUS=2 (a rehearsal of this script on the CPU, gloo instead of NCCL).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
RULES=${RULES:-"bp fa-usf-sn+const dfa"}
ARCH=${ARCH:-resnet20}
EPOCHS=${EPOCHS:-4}
BATCH=${BATCH:-256}
RESULTS=${RESULTS:-/tmp/fabench-gpu-ddp}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" FABENCH_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

$PY -c 'import torch, typer, timm, rich, pandas, yaml' 2>/dev/null \
  || { echo "gpu_check_ddp: $PY lacks fabench's dependencies (pip install -e .)" >&2; exit 1; }
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cuda ]; then
  GPUS=$($PY -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
  if [ "$GPUS" -lt 1 ]; then echo "gpu_check_ddp: no CUDA device visible" >&2; exit 1; fi
  nvidia-smi -L 2>/dev/null || true
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "nccl", torch.cuda.nccl.version())'
fi
GPUS=${GPUS:-1}
WORLDS="1"
if [ "$GPUS" -gt 1 ]; then WORLDS="1 $GPUS"; fi
rm -rf "$RESULTS"
mkdir -p "$RESULTS/logs"

# train NPROC RESULTS_DIR RULE [EXTRA fabench run options...]
train() {
  local n=$1 results=$2 rule=$3
  shift 3
  local log="$RESULTS/logs/$(basename "$results")-${rule//+/_}.log"
  if ! $PY -m torch.distributed.run --standalone --nproc-per-node "$n" -m fabench run --rule "$rule" \
      --dataset cifar10-mini --optimizer sgd --schedule none --diagnostics off --device "$DEVICE" \
      --no-progress --results-dir "$results" "$@" >"$log" 2>&1; then
    echo "gpu_check_ddp: $rule on $n GPU(s) failed; last lines of $log:" >&2
    tail -n 25 "$log" >&2
    return 1
  fi
}

status=0
for rule in $RULES; do
  for n in $WORLDS; do
    echo "== $rule, $n process(es)"
    train "$n" "$RESULTS/speed-g$n" "$rule" --arch "$ARCH" --epochs "$EPOCHS" --batch-size "$BATCH" --lr 0.05 || status=1
  done
done
if [ "$GPUS" -gt 1 ]; then
  for n in $WORLDS; do
    echo "== equivalence: arch1 fa-usf-sn+const, $n process(es)"
    # 4 steps at a stable rate: differences in the last bits grow with training (on the CPU, 1 vs 2
    # processes differ after 30 steps exactly as much as 1 vs 2 threads of one process do)
    train "$n" "$RESULTS/same-g$n" fa-usf-sn+const --arch arch1 --epochs 1 --subset $((4 * BATCH)) --batch-size "$BATCH" \
      --lr 0.01 --deterministic || status=1
  done
fi

$PY - "$RESULTS" "$GPUS" <<'EOF' | tee "$RESULTS/summary.txt"
"""Images/s per rule and world size; weight difference between 1 and G GPUs (arch1)."""
import csv, statistics, sys
from pathlib import Path

import torch

results, gpus = Path(sys.argv[1]), int(sys.argv[2])
print(f"{'rule':<20} {'GPUs':>4} {'images/s':>10} {'per GPU':>9} {'top1 %':>7}  device")
for folder in sorted(results.glob("speed-g*"), key=lambda p: int(p.name[7:])):
    runs = folder / "runs.csv"
    if not runs.is_file():
        continue
    for row in csv.DictReader(runs.open()):
        curves = folder / row["task"] / row["run_id"] / "curves.csv"
        rates = [float(r["value"]) for r in csv.DictReader(curves.open())
                 if (r["split"], r["metric"]) == ("train", "images_per_s") and int(r["epoch"]) > 1]
        rate = statistics.median(rates) if rates else float(row["images_per_s"] or "nan")
        world = int(folder.name[7:])
        print(f"{row['rule']:<20} {world:>4} {rate:>10.0f} {rate / world:>9.0f} {float(row['final_top1'] or 'nan'):>7.2f}  {row['device']}")
if gpus > 1:
    one, many = ([*(results / f"same-g{n}").glob("adhoc/*/last.pt")] for n in (1, gpus))
    if one and many:
        a = torch.load(one[0], map_location="cpu", weights_only=True)["model"]
        b = torch.load(many[0], map_location="cpu", weights_only=True)["model"]
        diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
        print(f"arch1 fa-usf-sn+const, 4 steps: largest weight difference 1 vs {gpus} GPUs = {diff:.3g}")
else:
    print("one GPU: images/s of single-process runs under torchrun; the 1-vs-G weight check needs 2+ GPUs")
EOF

if [ -n "${OUT:-}" ]; then
  cp "$RESULTS/summary.txt" "$OUT/" && tar -czf "$OUT/logs.tgz" -C "$RESULTS" logs
fi
exit $status
