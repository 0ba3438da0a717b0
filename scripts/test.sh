#!/usr/bin/env bash
# Set up .venv (see setup_env.sh) and run the whole test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" test,plot
python -m pytest tests "$@"
