# call F of run 33, right after E (still warm: /root/stage holds the joined model): train default-v4
# again (its files of 2026-12-02 were lost with that session's machine: same command, same samples),
# for the same budget (500 s); drafter, report and log in one tar (evaluated on the CPU afterwards)
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
mkdir -p /root/data /root/work/out/data /root/f && cp -r .data/* /root/data/ && cp examples/results/drafters/default-v3/data/*.part-00 /root/work/out/data/
AS='import sys; from agentspark.cli import main; sys.exit(main(sys.argv[1:]))'
timeout 570 python3 -c "$AS" train-drafter --target default --method dspark --device cuda --prompts /root/data/train --out /root/work/out --agent-sessions 1280 --agent-slots 64 --num-layers 1 --num-features 3 --markov-rank 32 --draft-vocab 16384 --batch-size 16 --anchors 64 --max-length 1024 --steps 9000 --save-every 0 --regen-max-new-tokens 320 --regen-batch-size 1024 --regen-answers 3 --regen-greedy --time-budget 500 > /root/f/train.log 2>&1; echo train rc=$?; tail -c 800 /root/f/train.log
mkdir -p /root/f/drafter && cp /root/work/out/drafter/* /root/f/drafter/ && cp /root/work/out/report.json /root/f/train_report.json; ls -la /root/f/drafter
tar -C /root/f -czf $OUT/run33_train.tgz .
