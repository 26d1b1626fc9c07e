# final block, call D (after staging calls A-C, GPU.md): join the default model; batch table with the
# n-gram drafter at every C and mode, 16 agent sessions through serve, the 1.5B/8B shapes for cost
cp .stage/4/* /root/stage/ && cat /root/stage/part-0* > /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /root/stage/gguf-*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
mkdir -p /root/data && cp -r .data/* /root/data/
git log --oneline | head -1 > $OUT/run32_commit.txt; git status --short | grep -v '^??' >> $OUT/run32_commit.txt
timeout 170 python3 examples/batch_bench.py --models default --time-limit-s 130 --out $OUT/run32_batch_default.json > $OUT/run32_batch_log.txt 2>&1; tail -26 $OUT/run32_batch_log.txt
timeout 100 python3 examples/serve_concurrency.py --sessions 16 --chats 0 --out $OUT/run32_serve_concurrency.json -- --slots 16 --device cuda --dtype bfloat16 > $OUT/run32_serve_log.txt 2>&1; python3 -c "
import json; d=json.load(open('$OUT/run32_serve_concurrency.json'))['sessions']; print({k: d[k] for k in ('concurrent_s','sequential_s','speedup','identical')})"
timeout 250 python3 examples/batch_bench.py --models 1.5b,8b --repeats 3 --time-limit-s 200 --out $OUT/run32_batch_1.5b_8b.json > $OUT/run32_shapes_log.txt 2>&1; tail -22 $OUT/run32_shapes_log.txt
