cd /tmp/reset_runs
for i in 1 2 3 4; do
  /work/main/.venv/bin/python auto_reset.py > demo_${i}_auto_reset.txt 2>&1; echo "$i auto_reset $(grep -E 'speedup over plain' demo_${i}_auto_reset.txt | head -1)"
  /work/main/.venv/bin/agentspark demo --drafter ngram > demo_${i}_ngram.txt 2>&1; echo "$i ngram $(grep -E 'speedup over plain' demo_${i}_ngram.txt | head -1)"
done
grep -h "audit (greedy" demo_*.txt | sort | uniq -c
