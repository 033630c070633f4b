#!/usr/bin/env bash
# GPU benchmarks. Run from the repository root (sets up .venv with `make install` first if missing):
#   bash benchmarks/gpu.sh             throughput, under 5 minutes on one H100/H200: SimCLR ResNet-18 at 32 px and
#                                      MAE ViT-S/16 at 224 px on generated images; CPU-worker vs batched on-device
#                                      augmentation, bf16-mixed + channels_last, and with torch.compile; images/s
#                                      and model FLOP utilisation
#   bash benchmarks/gpu.sh reproduce [--methods simclr byol ...] [--epochs 200] [--data data]
#                                      the CIFAR-10 recipes under lightly's protocol (ResNet-18, kNN k=200, 200
#                                      epochs) beside lightly's published numbers (benchmarks/reproduce.py); needs
#                                      CIFAR-10 under data/ (or --download), else it runs on generated stand-ins
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/setup_env.sh
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
if [ "${1:-}" = reproduce ]; then
  shift
  exec .venv/bin/python benchmarks/reproduce.py "$@"
fi
timeout 280 .venv/bin/python benchmarks/gpu_throughput.py --batch_size 256 --steps 50 --warmup 15 --compile "$@"
