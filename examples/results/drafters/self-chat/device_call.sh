# Self-written chat data for the next drafter (issue 12): 2,048 chat requests written by the target
# (train-drafter --chat-prompts, Magpie-style) and answered by it twice (once greedy, once sampled),
# on the H200, in the device call after staging calls 1-3 (GPU.md), carrying [".stage/4", ".data", ".whl"].
# default-v3's committed samples are put in out/data first, so only the chat data is generated; the
# run trains one step and stops (--stop-at-step 1): the data is what this call is for. Brought back
# gzipped (every file <= 16 MiB); a later run trains on the three sample files together.
set -u
mkdir -p /root/stage /root/data /root/work/out/data
[ -f /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf ] || { cp .stage/4/* /root/stage/ && cat /root/stage/part-0* > /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf; }
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /root/stage/gguf-*.whl .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
cp -r .data/* /root/data/
cp examples/results/drafters/default-v3/data/*.part-* /root/work/out/data/
{ git log --oneline -1; git status --short; echo "tree_sha256 $(bash examples/results/batch_h200/tree_sha256.sh)"; } > $OUT/commit.txt
AS='import sys; from agentspark.cli import main; sys.exit(main(sys.argv[1:]))'
timeout 430 python3 -c "$AS" train-drafter --target default --method dspark --device cuda --prompts /root/data/train \
  --out /root/work/out --agent-sessions 1280 --agent-slots 64 --num-layers 1 --num-features 3 --markov-rank 32 \
  --draft-vocab 16384 --batch-size 16 --anchors 64 --max-length 1024 --steps 9000 --save-every 0 \
  --regen-max-new-tokens 320 --regen-batch-size 1024 --regen-answers 1 --regen-greedy --chat-prompts 2048 \
  --stop-at-step 1 > $OUT/chat_data.log 2>&1
echo "rc=$?"; tail -15 $OUT/chat_data.log
for f in chat_prompts chat_samples; do [ -f /root/work/out/data/$f.jsonl ] && gzip -c /root/work/out/data/$f.jsonl | split -b 15M -d -a 2 - $OUT/$f.jsonl.gz.part-; done
wc -l /root/work/out/data/chat_*.jsonl; ls -la $OUT
[ -f /root/work/out/report.json ] && cp /root/work/out/report.json $OUT/report.json
