#!/usr/bin/env bash
# Issue 13's GPU items in one run, for a session lent a GPU (device `run`, ~10 min on an H200):
# the train step against full fine-tuning in bf16, eager and with train.compile, for MiniLM and a
# BERT-base-size model (random init), plus peak GPU memory. One JSON per model under $OUT.
#
#   run: bash benchmarks/gpu_step.sh            (OUT defaults to ./gpu_step_out)
#   DEVICE=cpu PRECISION=fp32 STEPS=1 REPS=1 MODELS=minilm bash benchmarks/gpu_step.sh   # checks the script on a CPU
set -euo pipefail
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=${OUT:-gpu_step_out}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
STEPS=${STEPS:-5}
REPS=${REPS:-10}
MODELS=${MODELS:-"minilm bert_base"}
mkdir -p "$OUT"
python -c "import supermask_cli" 2>/dev/null || pip install -q --no-deps -e .
common=(--device "$DEVICE" --precision "$PRECISION" --compile --kind both --steps "$STEPS" --reps "$REPS" --skip eval)
for model in $MODELS; do
  if [ "$model" = minilm ]; then
    python benchmarks/speed_memory.py "${common[@]}" > "$OUT/minilm.json"
  else
    BERT="$OUT/bert-base-random"
    [ -d "$BERT" ] || python benchmarks/bert_base_random.py --out "$BERT" > "$OUT/bert_base_random.log"
    python benchmarks/speed_memory.py --model "$BERT" --no-full-fused "${common[@]}" > "$OUT/bert_base.json"
    rm -rf "$BERT"  # 440 MB: not worth bringing back
  fi
done
python - "$OUT" $MODELS <<'EOF'
import json, sys
for name in sys.argv[2:]:
    step = json.load(open(f"{sys.argv[1]}/{name}.json"))["step"]
    print(name, {k: round(v, 3) for k, v in step.items() if k.endswith("/full")})
EOF
