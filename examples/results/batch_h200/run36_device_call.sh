# run 36 (2026-12-03, third session): calls A, B, C right after staging calls 1-3 (GPU.md), each
# carrying [".stage/4", ".data", ".whl"] (.whl: pydantic 2.12.5, pydantic-core 2.41.5,
# annotated-types 0.7.0, typing-inspection 0.4.2, tenacity 9.1.2, llguidance 1.9.1, cp312 manylinux).
# Call A (`bash run36_device_call.sh A`): every GPU test (run 35 could not import agentspark: the
# conftest now puts the root back, last, when agentspark is not installed) and the default model's
# batch table under a steady load (--waves 4: 4C requests through C slots, continuous batching).
# Call B: the 1.5B and 8B shapes, --waves 2. Call C: the agent demo, auto against ngram, 5
# alternating runs (the end-of-request track and the stop-cut track landed after run 34's demo).
# As it ran: calls A, C, B in that order, one lease. Each run36*_commit.txt names 54ebafe: the
# device copy's .git was stale; its working tree was 8987d63's (the files it lists as changed and
# this script are that commit's).
set -u
part=${1:?A, B or C}
mkdir -p /root/stage /root/data /root/out
[ -f /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf ] || { cp .stage/4/* /root/stage/ && cat /root/stage/part-0* > /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf; }
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /root/stage/gguf-*.whl .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
cp -r .data/* /root/data/
git log --oneline -1 > $OUT/run36${part}_commit.txt; git status --short >> $OUT/run36${part}_commit.txt
case $part in
A)
  timeout 150 python3 -m pytest -q -m gpu tests/test_gpu_runtime.py tests/test_graph_round_masks.py tests/test_route_a.py > $OUT/run36_gpu_tests.log 2>&1; tail -15 $OUT/run36_gpu_tests.log
  timeout 400 python3 examples/batch_bench.py --models default --waves 4 --time-limit-s 330 --out $OUT/run36_batch_default_w4.json > $OUT/run36_batch_default_w4_log.txt 2>&1; tail -26 $OUT/run36_batch_default_w4_log.txt
  ;;
B)
  timeout 560 python3 examples/batch_bench.py --models 1.5b,8b --waves 2 --repeats 3 --time-limit-s 470 --out $OUT/run36_batch_shapes_w2.json > $OUT/run36_batch_shapes_w2_log.txt 2>&1; tail -46 $OUT/run36_batch_shapes_w2_log.txt
  ;;
C)
  AS='import sys; from agentspark.cli import main; sys.exit(main(sys.argv[1:]))'
  mkdir -p /root/demo
  for i in 1 2 3 4 5; do for d in auto ngram; do [ $SECONDS -gt 490 ] && break 2; timeout 80 python3 -c "$AS" demo --device cuda --dtype bfloat16 --drafter $d > /root/demo/demo_${i}_$d.txt 2>&1; echo "$i $d rc=$? $(grep -E 'speedup over plain' /root/demo/demo_${i}_$d.txt | head -1)"; done; done
  grep -hE "audit \(greedy" /root/demo/demo_*.txt | sort | uniq -c
  tar -C /root/demo -czf $OUT/run36_demo.tgz .
  ;;
esac
