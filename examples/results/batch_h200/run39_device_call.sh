# run 39: calls B, C, D right after staging calls 1-3
# (GPU.md), each carrying [".stage/4", ".data", ".whl"] (.whl: pydantic 2.12.5, pydantic-core
# 2.41.5, annotated-types 0.7.0, typing-inspection 0.4.2, tenacity 9.1.2, llguidance 1.9.1).
# Prepared and run 2026-12-04, the session of run 38, after three changes since run 38: the batch
# SPS table timed at every length of the full row bucket (run 38 timed B = 16 at 4 slots as 2 rows
# x 8 tokens), rounds that feed an admission kept out of the table and of DraftingRates, and the
# demo's rehearsal capturing every round length of the keys it met. Run 38 came after the n-gram's
# confidences per draft position
# (the batch Θ rule had priced every position at one rate) and the n-gram drafter's start moved
# behind the queued prefill at admission.
# Call A is run 38's (not run here).
# Call B: the default model's batch table under a steady load (--waves 4), plain, k1, k3, k7, adaptive.
# Call C: one burst (W=1) of the default model, and the 1.5B shape at C=1,4 (--waves 2).
# Call D: the agent demo on the GPU, auto against n-gram, 5 alternating runs (issue 12, item 4).
# The device copy's .git may be stale: tree_sha256 (every .py under the package folders, examples
# and tests) names the working tree that ran; `bash examples/results/batch_h200/tree_sha256.sh`
# prints the same for a checkout.
set -u
part=${1:?A, B, C or D}
mkdir -p /root/stage /root/data
[ -f /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf ] || { cp .stage/4/* /root/stage/ && cat /root/stage/part-0* > /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf; }
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /root/stage/gguf-*.whl .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
cp -r .data/* /root/data/
{ git log --oneline -1; git status --short; echo "tree_sha256 $(bash examples/results/batch_h200/tree_sha256.sh)"; } > $OUT/run39${part}_commit.txt
case $part in
A)
  timeout 230 python3 -m pytest -q -rA -m gpu tests/test_gpu_runtime.py tests/test_graph_round_masks.py tests/test_route_a.py > $OUT/run39_gpu_tests.log 2>&1; tail -40 $OUT/run39_gpu_tests.log
  ;;
B)
  timeout 420 python3 examples/batch_bench.py --models default --waves 4 --modes plain,k1,k3,k7,adaptive --time-limit-s 340 --out $OUT/run39_batch_default_w4.json > $OUT/run39_batch_default_w4_log.txt 2>&1; tail -30 $OUT/run39_batch_default_w4_log.txt
  ;;
C)
  timeout 150 python3 examples/batch_bench.py --models default --time-limit-s 110 --out $OUT/run39_batch_default_w1.json > $OUT/run39_batch_default_w1_log.txt 2>&1; tail -26 $OUT/run39_batch_default_w1_log.txt
  timeout 260 python3 examples/batch_bench.py --models 1.5b --concurrency 1,4 --waves 2 --repeats 5 --time-limit-s 210 --out $OUT/run39_batch_1.5b_w2.json > $OUT/run39_batch_1.5b_w2_log.txt 2>&1; tail -20 $OUT/run39_batch_1.5b_w2_log.txt
  ;;
D)
  AS='import sys; from agentspark.cli import main; sys.exit(main(sys.argv[1:]))'
  mkdir -p /root/demo
  for i in 1 2 3 4 5; do for d in auto ngram; do [ $SECONDS -gt 400 ] && break 2; timeout 80 python3 -c "$AS" demo --device cuda --dtype bfloat16 --drafter $d > /root/demo/demo_${i}_$d.txt 2>&1; echo "$i $d rc=$? $(grep -E 'speedup over plain' /root/demo/demo_${i}_$d.txt | head -1)"; done; done
  grep -hE "audit \(greedy" /root/demo/demo_*.txt | sort | uniq -c
  cp /root/demo/demo_*.txt $OUT/
  ;;
esac
