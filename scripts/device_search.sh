#!/usr/bin/env bash
# Adaptive-search speed on a GPU: batched (speculative) candidates of fast, and the predict search.
#
# Prepare here, on any machine with the data (the GPU machine has no PyAV and no ../shared):
#
#   D=../shared/data/video/dev/sam2
#   python benchmarks/search.py --save-clips packs/device/clips \
#       --clips $D/01_dog.mp4 $D/03_blocks.mp4 $D/bedroom.mp4 --frames 32 --resolution 112   # 6 MB
#   cp -r UNCOND_MODEL_DIR packs/device/uncond_model    # 28 MB; scripts/train_default_gpu.sh makes one
#   python benchmarks/search.py --save-clips packs/device/clips256 --clips $D/bedroom.mp4 --frames 33 \
#       --resolution 256                                 # the 256 px, 33-frame clip for predict's per-block time
#
# Then run it through the device tool with carry ["packs/device"] (the tracked tree is 29 MB, so all
# of it travels within the 64 MiB limit) and command
#   OUT=$OUT bash scripts/device_search.sh
# The whole run takes a few minutes on an H200. DEVICE=cpu FRAMES=8 runs the same steps on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-outputs/device}"
DEVICE="${DEVICE:-cuda}"
FRAMES="${FRAMES:-32}"
mkdir -p "$OUT"
uncond=()
[ -d packs/device/uncond_model ] && uncond=(--unconditioned-model packs/device/uncond_model)
{ nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true; } | tee "$OUT/device.txt"
python3 benchmarks/search.py --device "$DEVICE" --speculation auto "${uncond[@]}" \
  --clips packs/device/clips/*.npy --frames "$FRAMES" --threshold 0.03 2>&1 | tee "$OUT/search.txt"
python3 benchmarks/search.py --device "$DEVICE" --clips packs/device/clips/*.npy --frames "$FRAMES" \
  --targets mse:0.02 mse:0.03 psnr:25 2>&1 | tee "$OUT/predict.txt"
if [ -d packs/device/clips256 ]; then
  python3 benchmarks/search.py --device "$DEVICE" --clips packs/device/clips256/*.npy --frames 33 \
    --targets mse:0.03 2>&1 | tee "$OUT/predict256.txt"
fi
if [ "$DEVICE" = cuda ]; then
  python3 benchmarks/gpu.py 2>&1 | tee "$OUT/gpu.txt"
fi
