# run 34, call T (after staging calls 1-3, GPU.md): join the default model, train default-v4 once more
# (its files of 2026-12-02 were lost with that session's machine; same recipe, same committed samples,
# --time-budget 500) and bring back its drafter, report and log. The drafter stays at
# /root/work/out/drafter for call E, issued right after (the machine stays warm 30 s).
# As it ran: the first try stopped at 'No module named pydantic', the second at tenacity (the GPU
# image has neither); the third carried their wheels in .whl (pydantic 2.12.5, pydantic-core
# 2.41.5, annotated-types 0.7.0, typing-inspection 0.4.2, tenacity 9.1.2; device README, Notes)
# with carry [".whl", ".data"], the model already joined by the first try:
#   python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
cp .stage/4/* /root/stage/ && cat /root/stage/part-0* > /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /root/stage/gguf-*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
mkdir -p /root/data /root/work/out/data && cp -r .data/* /root/data/ && cp examples/results/drafters/default-v3/data/*.part-00 /root/work/out/data/
AS='import sys; from agentspark.cli import main; sys.exit(main(sys.argv[1:]))'
timeout 560 python3 -c "$AS" train-drafter --target default --method dspark --device cuda --prompts /root/data/train --out /root/work/out --agent-sessions 1280 --agent-slots 64 --num-layers 1 --num-features 3 --markov-rank 32 --draft-vocab 16384 --batch-size 16 --anchors 64 --max-length 1024 --steps 9000 --save-every 0 --regen-max-new-tokens 320 --regen-batch-size 1024 --regen-answers 3 --regen-greedy --time-budget 500 > $OUT/train.log 2>&1; echo train rc=$?; tail -c 900 $OUT/train.log
mkdir -p $OUT/drafter && cp /root/work/out/drafter/* $OUT/drafter/ && cp /root/work/out/report.json $OUT/train_report.json; ls -la $OUT/drafter
