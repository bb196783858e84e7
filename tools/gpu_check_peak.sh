#!/usr/bin/env bash
# GPU check of `fabench bench peak`: images/s, achieved GFLOP/s and fraction of the card's matmul
# peak (fp32 and bf16, measured in the same process) for a plain PyTorch step and a fabench step,
# in fp32 and in bf16 with channels_last, on the architectures of the reproduction tasks and on
# resnet18 at ImageNet-64 and ImageNet sizes. The same table as on the CPU.
#
# Usage: tools/gpu_check_peak.sh          (about a minute on one H100)
# Env:   PY (python with fabench's dependencies; default .venv/bin/python or python3),
#        DEVICE (cuda), RULE (fa-usf-sn), OUT (copy summary there).
#        DEVICE=cpu rehearses it on the CPU (slowly: use it to check the script, not the figures).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEVICE=${DEVICE:-cuda}
RULE=${RULE:-fa-usf-sn}
SUMMARY=$(mktemp)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" FABENCH_OFFLINE=1
[ "$DEVICE" = cpu ] || nvidia-smi -L 2>/dev/null | tee -a "$SUMMARY" || true
while read -r arch batch size classes; do
  $PY -m fabench bench peak --arch "$arch" --batch-size "$batch" --image-size "$size" --num-classes "$classes" \
    --rule "$RULE" --device "$DEVICE" --steps 5 --rounds 3 | tee -a "$SUMMARY"
done <<'CASES'
arch1 256 24 10
resnet20 256 32 10
resnet18 256 64 1000
resnet18 256 224 1000
CASES
[ -n "${OUT:-}" ] && cp "$SUMMARY" "$OUT/peak-summary.txt" || true
