# final block, call D: join the default model; batched admission prefill on the GPU (test, serve, bench)
cp .stage/4/* /root/stage/ && cat /root/stage/part-0* > /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /root/stage/gguf-*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
git log --oneline | head -1 > $OUT/run31_commit.txt; git status --short | grep -v '^??' >> $OUT/run31_commit.txt
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_prefill_rows.py > $OUT/run31_gpu_prefill_rows_test.log 2>&1; tail -3 $OUT/run31_gpu_prefill_rows_test.log
timeout 100 python3 examples/serve_concurrency.py --sessions 16 --chats 0 --out $OUT/run31_serve_concurrency.json -- --slots 16 --device cuda --dtype bfloat16 > $OUT/run31_serve_log.txt 2>&1; python3 -c "
import json; d=json.load(open('$OUT/run31_serve_concurrency.json'))['sessions']; print({k: d[k] for k in ('concurrent_s','sequential_s','speedup','identical')}); print(d['engine_concurrent'])"
timeout 75 python3 examples/batch_bench.py --models default --modes plain,adaptive --concurrency 16,64 --repeats 3 --time-limit-s 45 --out $OUT/run31_batch_default.json > $OUT/run31_batch_log.txt 2>&1; tail -9 $OUT/run31_batch_log.txt
