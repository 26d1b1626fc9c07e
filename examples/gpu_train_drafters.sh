#!/usr/bin/env bash
# Train the default DSpark drafter (and a DFlash baseline on the same data) for SmolLM2-135M on one
# H200, then evaluate both and n-gram by DeepSpec's protocol. Run through the device tool after
# staging the default model (GPU.md), with .data/ (copies of ../shared/data/prompts) and .whl/
# (rich and its dependencies) carried:
#   bash examples/gpu_train_drafters.sh dspark   # regenerate + train DSpark + calibrate   (call 1)
#   bash examples/gpu_train_drafters.sh rest     # DFlash on the same samples + eval-drafter (call 2)
# The baselines on the samples of that first run (carried as .gpu-in/samples.jsonl.gz, with the
# DFlash drafter in .gpu-in/dflash), one call each:
#   bash examples/gpu_train_drafters.sh eagle3   # EAGLE-3, same data and steps as the shipped DSpark
#   bash examples/gpu_train_drafters.sh large    # an unconstrained DSpark (2 layers, full vocab, float32)
#   bash examples/gpu_train_drafters.sh eval     # eval-drafter: DSpark, DFlash, EAGLE-3, n-gram
#   bash examples/gpu_train_drafters.sh eval-size  # eval-drafter: the large and an int8 copy of the shipped DSpark
# Everything a later step needs stays in /root/work on the (warm) machine; results go to $OUT.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl /root/stage/gguf-*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=${OUT:-./gpu-out}; W=/root/work; mkdir -p "$OUT" "$W"
cli() { python3 -c 'import sys; from agentspark.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
COMMON=(--target default --device cuda --prompts .data/train --num-layers 1 --num-features 3 --markov-rank 32
        --draft-vocab 16384 --batch-size 16 --anchors 64 --max-length 1024 --steps 4000 --save-every 0
        --regen-max-new-tokens 320 --regen-batch-size 512)
case "${1:-dspark}" in
  dspark)
    cli train-drafter --method dspark --out "$W/dspark" --time-budget "${BUDGET:-240}" "${COMMON[@]}" 2>&1 | tee "$OUT/train-dspark.log"
    cp "$W/dspark/drafter/config.json" "$OUT/dspark-config.json"; cp "$W/dspark/drafter/model.safetensors" "$OUT/dspark-model.safetensors"
    cp "$W/dspark/report.json" "$OUT/dspark-report.json"; gzip -c "$W/dspark/data/samples.jsonl" > "$OUT/samples.jsonl.gz" ;;
  rest)
    cli train-drafter --method dflash --out "$W/dflash" --responses "$W/dspark/data/samples.jsonl" --time-budget "${BUDGET:-150}" "${COMMON[@]}" 2>&1 | tee "$OUT/train-dflash.log"
    cp "$W/dflash/drafter/config.json" "$OUT/dflash-config.json"; cp "$W/dflash/drafter/model.safetensors" "$OUT/dflash-model.safetensors"
    cp "$W/dflash/report.json" "$OUT/dflash-report.json"
    cli eval-drafter --model default --dtype bfloat16 --device cuda --prompts .data/eval --limit "${LIMIT:-10}" \
      --max-new-tokens "${NEW:-128}" --drafter "learned:$W/dspark/drafter" --drafter "learned:$W/dflash/drafter" \
      --drafter ngram --json "$OUT/eval.json" 2>&1 | tee "$OUT/eval.log" ;;
  eagle3)
    mkdir -p "$W/data"; gunzip -c .gpu-in/samples.jsonl.gz > "$W/data/samples.jsonl"
    cli train-drafter --method eagle3 --out "$W/eagle3" --responses "$W/data/samples.jsonl" "${COMMON[@]}" \
      --steps 2818 --time-budget "${BUDGET:-420}" 2>&1 | tee "$OUT/train-eagle3.log"
    cp "$W/eagle3/drafter/config.json" "$OUT/eagle3-config.json"; cp "$W/eagle3/report.json" "$OUT/eagle3-report.json" ;;
  large)
    cli train-drafter --method dspark --out "$W/large" --responses "$W/data/samples.jsonl" "${COMMON[@]}" \
      --num-layers 2 --draft-vocab 0 --markov-rank 64 --storage float32 --steps 2818 --time-budget "${BUDGET:-300}" \
      2>&1 | tee "$OUT/train-large.log"
    cp "$W/large/report.json" "$OUT/large-report.json" ;;
  eval)
    cli eval-drafter --model default --dtype bfloat16 --device cuda --prompts .data/eval --limit "${LIMIT:-6}" \
      --max-new-tokens "${NEW:-128}" --drafter default --drafter learned:.gpu-in/dflash \
      --drafter "learned:$W/eagle3/drafter" --drafter ngram --json "$OUT/eval.json" 2>&1 | tee "$OUT/eval.log" ;;
  eval-size)
    python3 -c 'import sys
from agentspark.model.loading import load_model
from agentspark.drafters.checkpoint import load_drafter_model, save_drafter
from agentspark.drafters.factory import default_drafter_dir
t = load_model("default", dtype="float32", device="cpu")
save_drafter(load_drafter_model(default_drafter_dir(), t), sys.argv[1], storage="int8")' "$W/int8"
    du -b "$W/int8/model.safetensors" "$W/large/drafter/model.safetensors" | tee "$OUT/sizes.txt"
    cli eval-drafter --model default --dtype bfloat16 --device cuda --prompts .data/eval --limit "${LIMIT:-6}" \
      --max-new-tokens "${NEW:-128}" --drafter "learned:$W/large/drafter" \
      --drafter "learned:$W/int8" --json "$OUT/eval-size.json" 2>&1 | tee "$OUT/eval-size.log" ;;
esac
