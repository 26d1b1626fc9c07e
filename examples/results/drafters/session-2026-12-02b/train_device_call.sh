# call E, right after call D (the machine still warm: /root/stage holds the joined model): train
# default-v4 on the committed samples for a fitted budget, bring its drafter and report back
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
mkdir -p /root/data /root/work/out/data && cp -r .data/* /root/data/ && cp examples/results/drafters/default-v3/data/*.part-00 /root/work/out/data/
timeout 570 python3 -c 'import sys; from agentspark.cli import main; sys.exit(main(sys.argv[1:]))' train-drafter --target default --method dspark --device cuda --prompts /root/data/train --out /root/work/out --agent-sessions 1280 --agent-slots 64 --num-layers 1 --num-features 3 --markov-rank 32 --draft-vocab 16384 --batch-size 16 --anchors 64 --max-length 1024 --steps 9000 --save-every 0 --regen-max-new-tokens 320 --regen-batch-size 1024 --regen-answers 3 --regen-greedy --time-budget 500 > $OUT/train.log 2>&1; echo train rc=$?; tail -c 1200 $OUT/train.log
mkdir -p $OUT/drafter && cp /root/work/out/drafter/* $OUT/drafter/ && cp /root/work/out/report.json $OUT/report.json; ls -la $OUT/drafter
