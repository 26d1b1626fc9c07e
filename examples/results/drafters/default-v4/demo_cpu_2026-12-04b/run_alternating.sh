#!/bin/bash
# 5 alternating CPU demo runs: auto (main, pooled-rate gate), auto (gate branch: expected accepted from per-position confidences), ngram
cd /tmp/gate_runs
for i in 1 2 3 4 5; do
  /work/main/.venv/bin/agentspark demo --drafter auto > demo_${i}_auto_main.txt 2>&1
  echo "$i auto_main $(grep -E 'speedup over plain' demo_${i}_auto_main.txt | head -1)"
  PYTHONPATH=/tmp/shimgate /work/main/.venv/bin/python -c 'import sys; from agentspark.cli import main; sys.exit(main(["demo","--drafter","auto"]))' > demo_${i}_auto_gate.txt 2>&1
  echo "$i auto_gate $(grep -E 'speedup over plain' demo_${i}_auto_gate.txt | head -1)"
  /work/main/.venv/bin/agentspark demo --drafter ngram > demo_${i}_ngram.txt 2>&1
  echo "$i ngram $(grep -E 'speedup over plain' demo_${i}_ngram.txt | head -1)"
done
grep -h "audit (greedy" demo_*.txt | sort | uniq -c
