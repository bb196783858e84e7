#!/usr/bin/env bash
# GPU check of the folder (ImageNet) input pipeline: is a run loader-bound or model-bound?
#
# Writes an ImageFolder of photo-like 500x375 JPEGs (about 94 KB each, ImageNet's typical size;
# fabench.bench.pipeline.write_photos), then measures on one GPU, for each JPEG decoder (cpu:
# the DataLoader workers; gpu: torchvision.io.decode_jpeg on the device):
#   loader   images/s of the folder pipeline alone (batches arriving normalised on the GPU),
#   model    images/s of ARCH's training steps alone under RULE on batches already on the GPU
#            (bf16 autocast, channels_last, SGD),
#   run      images/s of `fabench run` on the folder (its last epoch, curves.csv), the real path,
# and prints per decoder "loader-bound" when the loader alone is slower than the model alone
# (the run then waits for data), else "model-bound", with the ratio loader/model.
#
# Usage: tools/gpu_check_loader.sh       (about 5 minutes on one H100/H200 with 16 cores)
# Env:   PY (default .venv/bin/python or python3), DEVICE (cuda), ARCH (resnet18), RULE (bp),
#        BATCH (256), WORKERS (empty: fabench's default, every core but one), CLASSES (50),
#        PER_CLASS (40: train images per class), STEPS (30 timed steps), EPOCHS (2: the run's
#        first epoch includes warm-up), DECODERS ("cpu gpu"), ROOT (/tmp/fabench-jpegs: kept
#        between calls), RESULTS (/tmp/fabench-gpu-loader), OUT (copy summary.txt there).
#        DEVICE=cpu DECODERS=cpu BATCH=8 CLASSES=2 PER_CLASS=8 STEPS=2 EPOCHS=1 rehearses it on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEVICE=${DEVICE:-cuda}
ARCH=${ARCH:-resnet18}
RULE=${RULE:-bp}
BATCH=${BATCH:-256}
CLASSES=${CLASSES:-50}
PER_CLASS=${PER_CLASS:-40}
STEPS=${STEPS:-30}
EPOCHS=${EPOCHS:-2}
DECODERS=${DECODERS:-"cpu gpu"}
ROOT=${ROOT:-/tmp/fabench-jpegs}
RESULTS=${RESULTS:-/tmp/fabench-gpu-loader}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" FABENCH_OFFLINE=1
[ "$DEVICE" = cpu ] || nvidia-smi -L 2>/dev/null || true
rm -rf "$RESULTS"
mkdir -p "$RESULTS"

# 1. the JPEG folder (train/<class>/*.jpg, val/<class>/*.jpg), written once
$PY - "$ROOT" "$CLASSES" "$PER_CLASS" <<'PY'
import pathlib, sys
from fabench.bench.pipeline import write_photos
root, classes, per_class = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for split, count in (("train", per_class), ("val", max(1, per_class // 8))):
    for c in range(classes):
        folder = root / split / f"class{c:04d}"
        if len(list(folder.glob("*.jpg"))) < count:
            write_photos(folder, count, seed=c * 7919 + (split == "val"))
print(f"JPEG folder {root}: {classes} classes x {per_class} train images")
PY

# 2. loader alone and model alone, per decoder
$PY - "$ROOT" "$DEVICE" "$ARCH" "$RULE" "$BATCH" "$STEPS" "${WORKERS:-}" "$DECODERS" > "$RESULTS/parts.tsv" <<'PY'
import sys, time, torch
from fabench.archs import create_model
from fabench.data import default_workers, load_dataset
from fabench.rules import apply
from fabench.train.device import synchronize

root, device, arch, rule, batch, steps, workers, decoders = sys.argv[1:9]
device, batch, steps = torch.device(device), int(batch), int(steps)
workers = int(workers) if workers else default_workers()
amp = device.type == "cuda"

def rate(batches, count):
    """Images/s over ``count`` batches after two warm-up ones."""
    iterator = iter(batches)
    for _ in range(2):
        next(iterator)
    synchronize(device)
    start, seen = time.perf_counter(), 0
    for _ in range(count):
        x, y = next(iterator)
        seen += x.shape[0]
    synchronize(device)
    return seen / (time.perf_counter() - start)

def forever(make):
    while True:
        yield from make()

model, _ = create_model(arch, num_classes=1000, in_chans=3, image_size=224)
handle = apply(model, rule, seed=0)
model.to(device=device, memory_format=torch.channels_last)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

def train_step(x, y):
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

fixed_x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
fixed_y = torch.randint(0, 1000, (batch,), device=device)
def model_batches():
    while True:
        train_step(fixed_x, fixed_y)
        yield fixed_x, fixed_y
model_rate = rate(model_batches(), steps)
print(f"model\t-\t{model_rate:.0f}\t{workers}")
for decode in decoders.split():
    dataset = load_dataset("imagenet", data_dir=root, image_size=224, decode=decode)
    loader = dataset.train_loader(batch, workers=workers, generator=torch.Generator().manual_seed(0),
                                  drop_last=True, device=device, channels_last=True)
    print(f"loader\t{decode}\t{rate(forever(lambda: iter(loader)), steps):.0f}\t{workers}")
PY

# 3. the real path: fabench run on the folder (only the cpu decoder: `fabench run` has no decoder option yet)
$PY -m fabench run --rule "$RULE" --arch "$ARCH" --dataset imagenet --data-dir "$ROOT" --image-size 224 \
  --epochs "$EPOCHS" --batch-size "$BATCH" --optimizer sgd --lr 0.01 --amp bf16 --channels-last \
  ${WORKERS:+--workers $WORKERS} --device "$DEVICE" --diagnostics off --task gpu-check-loader \
  --results-dir "$RESULTS/runs" --no-progress >/dev/null

$PY - "$RESULTS" <<'PY' | tee "$RESULTS/summary.txt"
import csv, pathlib, sys
results = pathlib.Path(sys.argv[1])
parts = [line.split("\t") for line in (results / "parts.tsv").read_text().splitlines()]
model = next(float(p[2]) for p in parts if p[0] == "model")
workers = parts[0][3]
row = next(csv.DictReader(open(results / "runs" / "runs.csv")))
curves = csv.DictReader(open(results / "runs" / row["task"] / row["run_id"] / "curves.csv"))
run = max((int(c["epoch"]), float(c["value"])) for c in curves if c["metric"] == "images_per_s")[1]
print(f"{workers} loader workers; model alone (synthetic batches on the device): {model:.0f} images/s")
print(f"fabench run on the JPEG folder (cpu decoder, last epoch): {run:.0f} images/s")
print("decoder\tloader images/s\tloader/model\tverdict")
for kind, decode, value, _ in parts:
    if kind == "loader":
        loader = float(value)
        verdict = "loader-bound" if loader < model else "model-bound"
        print(f"{decode}\t{loader:.0f}\t{loader / model:.2f}\t{verdict}")
PY
[ -n "${OUT:-}" ] && cp "$RESULTS/summary.txt" "$OUT/" || true
