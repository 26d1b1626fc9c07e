# run 34, call E, right after call T (still warm): the new drafter against the shipped default-v3 and
# n-gram (greedy, 10 eval prompts x 256 tokens), then the agent demo on the GPU with the new drafter in
# the places it would take if shipped: 5 alternating runs of ngram+learned (= auto) and ngram, and
# learned alone (= default) while time is left; every demo output tarred into one file
# As it ran: the eval ran in the first call, every demo there stopped at 'No module named
# llguidance' (the GPU image lacks it); the second call added llguidance 1.9.1's wheel to .whl,
# installed them as in train_device_call.sh and ran the rest with the eval line replaced by an echo.
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
AS='import sys; from agentspark.cli import main; sys.exit(main(sys.argv[1:]))'
V4=learned:/root/work/out/drafter
timeout 110 python3 -c "$AS" eval-drafter --device cuda --dtype bfloat16 --gpu-mode fast --drafter $V4 --drafter default --drafter ngram --prompts /root/data/eval --limit 10 --max-new-tokens 256 --temperature 0.0 --json $OUT/eval_gpu_10x256_T0.json > $OUT/eval_T0.log 2>&1; echo eval rc=$?; tail -20 $OUT/eval_T0.log
mkdir -p /root/demo
for i in 1 2 3 4 5; do for d in ngram+$V4 ngram $V4; do n=$(echo $d | sed 's/learned:.*/v4/; s/+/_/'); [ $n = v4 ] && [ $SECONDS -gt 520 ] && continue; [ $SECONDS -gt 560 ] && break 2; timeout 80 python3 -c "$AS" demo --device cuda --dtype bfloat16 --drafter $d > /root/demo/demo_${i}_$n.txt 2>&1; echo "$i $n rc=$? $(grep -E 'speedup over plain' /root/demo/demo_${i}_$n.txt | head -1)"; done; done
grep -hE "audit \(greedy" /root/demo/demo_*.txt | sort | uniq -c
tar -C /root/demo -czf /tmp/demo.tgz . && cp /tmp/demo.tgz $OUT/run34_demo.tgz
