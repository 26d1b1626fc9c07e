# call D of run 33 (after staging calls A-C, GPU.md): join the default model; the batch table with
# the n-gram drafter at every C and mode (after the host-time cuts and the larger DraftingRates pool),
# then the 1.5B/8B shapes with time for C = 64's adaptive. Outputs tarred: the tool returns 8 files.
cp .stage/4/* /root/stage/ && cat /root/stage/part-0* > /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /root/stage/gguf-*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
mkdir -p /root/data /root/out && cp -r .data/* /root/data/
find agentspark backends kernels tools traces examples -name '*.py' -not -path '*/agentspark/kernels/*' -not -path '*/agentspark/backends/*' -not -path '*/agentspark/tools/*' -not -path '*/agentspark/traces/*' | sort | xargs sha256sum | sha256sum > /root/out/run33_tree_sha.txt
timeout 170 python3 examples/batch_bench.py --models default --time-limit-s 130 --out /root/out/run33_batch_default.json > /root/out/run33_batch_log.txt 2>&1; tail -26 /root/out/run33_batch_log.txt
timeout 340 python3 examples/batch_bench.py --models 1.5b,8b --repeats 3 --time-limit-s 290 --out /root/out/run33_batch_1.5b_8b.json > /root/out/run33_shapes_log.txt 2>&1; tail -44 /root/out/run33_shapes_log.txt
tar -C /root/out -czf $OUT/run33_D.tgz .
