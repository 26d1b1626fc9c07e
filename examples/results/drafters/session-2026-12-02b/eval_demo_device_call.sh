# call F, right after call E (still warm): the new drafter against default-v3 (greedy and T=1), then
# the agent demo on the GPU, 5 alternating runs of auto / ngram / default
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
AS='import sys; from agentspark.cli import main; sys.exit(main(sys.argv[1:]))'
timeout 110 python3 -c "$AS" eval-drafter --device cuda --dtype bfloat16 --gpu-mode fast --drafter learned:/root/work/out/drafter --drafter default --drafter ngram --prompts /root/data/eval --limit 20 --max-new-tokens 256 --temperature 0.0 --json $OUT/eval_gpu_20x256_T0.json > $OUT/eval_T0.log 2>&1; echo eval rc=$?; tail -12 $OUT/eval_T0.log
timeout 80 python3 -c "$AS" eval-drafter --device cuda --dtype bfloat16 --gpu-mode fast --drafter learned:/root/work/out/drafter --drafter default --prompts /root/data/eval --limit 20 --max-new-tokens 256 --temperature 1.0 --json $OUT/eval_gpu_20x256_T1.json > $OUT/eval_T1.log 2>&1; echo eval1 rc=$?; tail -8 $OUT/eval_T1.log
for i in 1 2 3 4 5; do for d in auto ngram default; do timeout 60 python3 -c "$AS" demo --device cuda --dtype bfloat16 --drafter $d > $OUT/demo_${i}_$d.txt 2>&1; echo "$i $d $(grep -E 'speedup over plain' $OUT/demo_${i}_$d.txt | head -1)"; done; done
grep -hE "audit \(greedy" $OUT/demo_*.txt | sort | uniq -c
