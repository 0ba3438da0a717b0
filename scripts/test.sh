#!/usr/bin/env bash
# Set up .venv (see setup_env.sh) and run the whole test suite. cuda-check: NVRTC and NVIDIA's
# headers, so the shipped CUDA kernel source is compiled without a GPU (tests/test_kernel_harness.py).
# mlx-lm: mlx-lm itself, so exported folders are loaded and served by it (tests/test_export_mlx_lm.py).
# tensorboard: tensorboardX (under 1 MB beside mlx-lm's protobuf), so `train --report-to
# tensorboard` is tested (tests/test_train_reporting.py). The wandb and parquet extras (about
# 100 MB and 170 MB installed) are not installed here: their tests skip, saying so.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" test,plot,cuda-check,mlx-lm,tensorboard
python -m pytest tests "$@"
