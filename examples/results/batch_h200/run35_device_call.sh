# run 35, prepared in the second session of 2026-12-03 and run in the third (results: run35_*): the call after
# staging calls 1-3 (GPU.md), carry [".stage/4", ".data", ".whl"], where .whl holds the wheels the
# GPU image lacks (pydantic 2.12.5, pydantic-core 2.41.5, annotated-types 0.7.0, typing-inspection
# 0.4.2, tenacity 9.1.2, llguidance 1.9.1 for cp312 manylinux: device README, Notes). It measures
# what the session changed on the CPU: round_tokens without inference mode (895ac87), feedback only
# for drafting rows (4f03fa5), the end-of-request track (the next turn prefills only what was
# appended), the fixed exact-mode control (e62bd4f); and where auto's extra prefill goes.
cp .stage/4/* /root/stage/ && cat /root/stage/part-0* > /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
# As it ran (2026-12-03, third session, device tree at 54ebafe): the GPU test stopped at conftest (no module
# agentspark: the conftest had dropped the root that PYTHONPATH named; fixed in 8987d63, run 36 ran them);
# the shapes part ran out of its 230 s before the 8B shape's C=64 (run35_shapes_log.txt is what the log held
# when the tar read it); the rest ran whole.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /root/stage/gguf-*.whl .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
mkdir -p /root/data /root/out && cp -r .data/* /root/data/
timeout 60 python3 -m pytest -q -m gpu tests/test_gpu_runtime.py -k exact_mode_rows > /root/out/run35_gpu_control.log 2>&1; tail -3 /root/out/run35_gpu_control.log
timeout 90 python3 examples/session_prefill_phases.py --out /root/out/run35_prefill_phases.json > /root/out/run35_prefill_phases.txt 2>&1; tail -9 /root/out/run35_prefill_phases.txt
timeout 170 python3 examples/batch_bench.py --models default --time-limit-s 130 --out /root/out/run35_batch_default.json > /root/out/run35_batch_log.txt 2>&1; tail -22 /root/out/run35_batch_log.txt
timeout 230 python3 examples/batch_bench.py --models 1.5b,8b --repeats 3 --time-limit-s 190 --out /root/out/run35_batch_1.5b_8b.json > /root/out/run35_shapes_log.txt 2>&1; tail -40 /root/out/run35_shapes_log.txt
tar -C /root/out -czf $OUT/run35.tgz .
