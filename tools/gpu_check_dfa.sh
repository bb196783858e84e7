#!/usr/bin/env bash
# GPU check of DFA's step time against its work model (issue "DFA at the cost its arithmetic
# allows"): `fabench bench rules` for dfa, dfa-conv and dfa-wht beside bp on timm resnet18 (64 px, 1000
# classes) and the CIFAR resnet20, printing measured time / bp, the work model's ratio and
# measured / model (target <= 1.15). One call on one warm machine, so the ratios compare like
# with like; then the feedback-memory benchmark at 224 px / 1000 classes (materialised vs tiled
# dfa, and dfa-wht: the RNG wall of the tiled form, target tiled within 2x of materialised), and
# whether the counter-based matrices are the same numbers on the GPU as on the CPU.
#
# Usage: tools/gpu_check_dfa.sh          (a few minutes on one H100)
# Env:   PY (default .venv/bin/python or python3), DEVICE (cuda), OUT (copy the summary there).
#        DEVICE=cpu rehearses it on the CPU (slow: about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEVICE=${DEVICE:-cuda}
SUMMARY=${SUMMARY:-/tmp/fabench-gpu-dfa.txt}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" FABENCH_OFFLINE=1 COLUMNS=200
[ "$DEVICE" = cpu ] || nvidia-smi -L 2>/dev/null || true
{
  echo "== resnet18, 64 px, 1000 classes, batch 64"
  $PY -m fabench bench rules --arch resnet18 --num-classes 1000 --image-size 64 --batch-size 64 \
    --rules dfa,dfa-conv,dfa-wht --steps 3 --rounds 3 --device "$DEVICE"
  echo "== resnet20, 32 px, 10 classes, batch 128"
  $PY -m fabench bench rules --arch resnet20 --image-size 32 --batch-size 128 \
    --rules dfa,dfa-conv,dfa-wht --steps 3 --rounds 3 --device "$DEVICE"
  echo "== the counter-based matrices: the same numbers on the CPU and on $DEVICE"
  $PY -c "
import torch
from fabench.rules import RandomMatrix
m = RandomMatrix(0, 'layer1.0.conv1', 'dfa', rows=200_003, cols=1000, std=0.01)
same = torch.equal(m.materialise(device='cpu'), m.materialise(device='$DEVICE').cpu())
print('cpu == $DEVICE:', same)
"
  echo "== feedback memory, resnet18 at 224 px, 1000 classes"
  $PY -m fabench bench feedback-memory --cases resnet18 --rules dfa,dfa-wht --max-materialise 9GiB --steps 3 --device "$DEVICE"
} 2>&1 | tee "$SUMMARY"
[ -n "${OUT:-}" ] && cp "$SUMMARY" "$OUT/" || true
