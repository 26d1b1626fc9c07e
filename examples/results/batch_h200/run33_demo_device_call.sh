# call E of run 33, right after D (still warm): the agent demo on the GPU after the rehearsal fix,
# 5 alternating runs of auto / ngram / default, every output tarred into one file
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
AS='import sys; from agentspark.cli import main; sys.exit(main(sys.argv[1:]))'
mkdir -p /root/demo
for i in 1 2 3 4 5; do for d in auto ngram default; do [ $SECONDS -gt 500 ] && break 2; timeout 100 python3 -c "$AS" demo --device cuda --dtype bfloat16 --drafter $d > /root/demo/demo_${i}_$d.txt 2>&1; echo "$i $d rc=$? $(grep -E 'speedup over plain' /root/demo/demo_${i}_$d.txt | head -1)"; done; done
grep -hE "audit \(greedy" /root/demo/demo_*.txt | sort | uniq -c
tar -C /root/demo -czf $OUT/run33_demo.tgz .
