# run 37, PREPARED IN THE THIRD SESSION OF 2026-12-03 AND NOT RUN (its device time was spent on runs
# 35 and 36): calls A and B right after staging calls 1-3 (GPU.md), each carrying
# [".stage/4", ".data", ".whl"] (.whl: pydantic 2.12.5, pydantic-core 2.41.5, annotated-types
# 0.7.0, typing-inspection 0.4.2, tenacity 9.1.2, llguidance 1.9.1, cp312 manylinux).
# Call A (`bash run37_device_call.sh A`): every GPU test with room to finish (run 36 stopped
# test_route_a.py at its 150 s limit; the exact-mode control is now a split-K LM head, not yet run
# on the GPU), then where auto's round-0 prefill goes in the demo's own session (run 36: 30 ms
# against n-gram's 24).
# Call B: the default model's batch table in one burst and under a steady load, for the record
# of whatever the admission path has become by then.
set -u
part=${1:?A or B}
mkdir -p /root/stage /root/data
[ -f /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf ] || { cp .stage/4/* /root/stage/ && cat /root/stage/part-0* > /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf; }
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /root/stage/gguf-*.whl .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
cp -r .data/* /root/data/
git log --oneline -1 > $OUT/run37${part}_commit.txt; git status --short >> $OUT/run37${part}_commit.txt
case $part in
A)
  timeout 330 python3 -m pytest -q -rA -m gpu tests/test_gpu_runtime.py tests/test_graph_round_masks.py tests/test_route_a.py > $OUT/run37_gpu_tests.log 2>&1; tail -40 $OUT/run37_gpu_tests.log
  timeout 200 python3 examples/session_prefill_phases.py --session demo --device cuda --repeats 3 --out $OUT/run37_prefill_phases_demo.json > $OUT/run37_prefill_phases_demo.txt 2>&1; tail -12 $OUT/run37_prefill_phases_demo.txt
  ;;
B)
  timeout 200 python3 examples/batch_bench.py --models default --time-limit-s 150 --out $OUT/run37_batch_default_w1.json > $OUT/run37_batch_default_w1_log.txt 2>&1; tail -26 $OUT/run37_batch_default_w1_log.txt
  timeout 380 python3 examples/batch_bench.py --models default --waves 4 --time-limit-s 320 --out $OUT/run37_batch_default_w4.json > $OUT/run37_batch_default_w4_log.txt 2>&1; tail -26 $OUT/run37_batch_default_w4_log.txt
  ;;
esac
