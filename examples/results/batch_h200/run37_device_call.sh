# run 37: calls A, B, C right after staging calls 1-3
# (GPU.md), each carrying [".stage/4", ".data", ".whl"] (.whl: pydantic 2.12.5, pydantic-core
# 2.41.5, annotated-types 0.7.0, typing-inspection 0.4.2, tenacity 9.1.2, llguidance 1.9.1).
# Prepared 2026-12-03 (third session), run 2026-12-03 (fourth session) after two changes to the
# batch engine's host work: TextTracker through tokenizers' DecodeStream (commit cost per row) and
# first_token_in_round (admission without its own host sync).
# Call A (`bash run37_device_call.sh A`): every GPU test with room to finish (run 36 stopped
# test_route_a.py at its 150 s limit; the exact-mode control is now a split-K LM head, not yet run
# on the GPU; route a's batch tests now admit with the first token in the round), then where
# auto's round-0 prefill goes in the demo's own session (run 36: 30 ms against n-gram's 24).
# Call B: the default model's batch table under a steady load (--waves 4), with plain, k1 and
# adaptive also as M/sync (the first token read at admission, as before): the admission change
# measured inside one run, the modes alternating.
# Call C: one burst (W=1) of the default model, and the 1.5B shape at C=1,4 (where adaptive was
# 0.89 and 0.86-0.98 of the best k / plain: the cheap-drafting rule, not yet measured on a GPU).
# The device copy's .git may be stale: tree_sha256 (every .py under the package folders, examples
# and tests) names the working tree that ran; `bash examples/results/batch_h200/tree_sha256.sh`
# prints the same for a checkout.
set -u
part=${1:?A, B or C}
mkdir -p /root/stage /root/data
[ -f /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf ] || { cp .stage/4/* /root/stage/ && cat /root/stage/part-0* > /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf; }
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /root/stage/gguf-*.whl .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
cp -r .data/* /root/data/
{ git log --oneline -1; git status --short; echo "tree_sha256 $(bash examples/results/batch_h200/tree_sha256.sh)"; } > $OUT/run37${part}_commit.txt
case $part in
A)
  timeout 330 python3 -m pytest -q -rA -m gpu tests/test_gpu_runtime.py tests/test_graph_round_masks.py tests/test_route_a.py > $OUT/run37_gpu_tests.log 2>&1; tail -40 $OUT/run37_gpu_tests.log
  timeout 200 python3 examples/session_prefill_phases.py --session demo --device cuda --repeats 3 --out $OUT/run37_prefill_phases_demo.json > $OUT/run37_prefill_phases_demo.txt 2>&1; tail -12 $OUT/run37_prefill_phases_demo.txt
  ;;
B)
  timeout 520 python3 examples/batch_bench.py --models default --waves 4 --modes plain,k1,k3,k7,adaptive,plain/sync,k1/sync,adaptive/sync --time-limit-s 440 --out $OUT/run37_batch_default_w4.json > $OUT/run37_batch_default_w4_log.txt 2>&1; tail -30 $OUT/run37_batch_default_w4_log.txt
  ;;
C)
  timeout 150 python3 examples/batch_bench.py --models default --time-limit-s 110 --out $OUT/run37_batch_default_w1.json > $OUT/run37_batch_default_w1_log.txt 2>&1; tail -26 $OUT/run37_batch_default_w1_log.txt
  timeout 300 python3 examples/batch_bench.py --models 1.5b --concurrency 1,4 --waves 2 --repeats 5 --time-limit-s 250 --out $OUT/run37_batch_1.5b_w2.json > $OUT/run37_batch_1.5b_w2_log.txt 2>&1; tail -20 $OUT/run37_batch_1.5b_w2_log.txt
  ;;
esac
