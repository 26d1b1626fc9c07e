# The CPU demo loop behind demo_cpu_alternating.txt and demo_cpu_alternating_after_track.txt (run from any
# directory; each demo output went to /tmp/v4/demo_cpu_<i>_<drafter>.txt, not kept)
cd /work/main && . .venv/bin/activate
for i in 1 2 3 4 5; do for d in auto ngram default; do agentspark demo --drafter $d > /tmp/v4/demo_cpu_${i}_$d.txt 2>&1; echo "$i $d $(grep -E 'speedup over plain' /tmp/v4/demo_cpu_${i}_$d.txt | head -1)"; done; done > /tmp/v4/demo_cpu_alternating.txt
grep -hE "audit \(greedy" /tmp/v4/demo_cpu_*.txt | sort | uniq -c >> /tmp/v4/demo_cpu_alternating.txt
echo finished >> /tmp/v4/demo_cpu_alternating.txt
