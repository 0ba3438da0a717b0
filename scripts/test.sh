#!/usr/bin/env bash
# Set up .venv (see setup_env.sh) and run the whole test suite. cuda-check: NVRTC and NVIDIA's
# headers, so the shipped CUDA kernel source is compiled without a GPU (tests/test_kernel_harness.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" test,plot,cuda-check
python -m pytest tests "$@"
