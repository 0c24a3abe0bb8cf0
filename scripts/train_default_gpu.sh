#!/usr/bin/env bash
# Trains the embedded default model on one GPU in under 9 minutes of training time.
#
#   bash scripts/train_default_gpu.sh [OUT_DIR]
#
# Step 1 (here, once): pack ../shared/data into a 55 MiB pack at 64 px (fits the device transfer
# limit). Step 2 (on the GPU machine): train the `small` preset with torch.compile, bf16 and a large
# batch for 8.5 minutes, then export it as a from_pretrained directory (28 MB of fp32 weights).
# Note: written for the H200 device machine but not yet run there (no GPU was lent when it was made).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-runs/default-gpu}}"
PACK="${PACK:-packs/default64.npz}"
if [ ! -f "$PACK" ]; then
  mkdir -p "$(dirname "$PACK")"
  elastictok pack-data --images ../shared/data/images/imagenette/train --videos ../shared/data/video/train \
    -o "$PACK" --size 64 --max-mb 55
fi
elastictok train --pack "$PACK" --preset small --steps 20000 --batch-size 256 --lr 1e-3 --warmup-steps 300 \
  --compile --precision bf16 --lpips-net vgg --max-minutes 8.5 --val-every 2000 --ckpt-every 2000 \
  --out "$OUT/run" --no-progress
elastictok export "$OUT/run" -o "$OUT/default_model"
