# run 30 (device call D of block 1): join the default model, the learned-drafter batch bench, the serve profile
cp .stage/4/* /root/stage/ && cat /root/stage/part-0* > /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /root/stage/gguf-*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
mkdir -p /root/data && cp -r .data/* /root/data/
sha256sum /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
git log --oneline | head -1 > $OUT/run30_commit.txt; git status --short >> $OUT/run30_commit.txt
timeout 170 python3 examples/batch_bench.py --models default --drafter default --modes plain,k3,adaptive --concurrency 1,4,16 --repeats 3 --time-limit-s 120 --out $OUT/run30_batch_default_learned.json > $OUT/run30_batch_learned_log.txt 2>&1; tail -22 $OUT/run30_batch_learned_log.txt
timeout 240 python3 examples/serve_concurrency.py --sessions 16 --chats 0 --out $OUT/run30_serve_concurrency.json -- --slots 16 --device cuda --dtype bfloat16 > $OUT/run30_serve_log.txt 2>&1; tail -c 2500 $OUT/run30_serve_concurrency.json; tail -5 $OUT/run30_serve_log.txt
