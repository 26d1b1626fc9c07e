# run 34, the last call of the session's drafter block (the machine still warm, the model joined,
# the wheels of train_device_call.sh in /tmp/site): the batch table of the default model with the
# n-gram drafter at every C and mode, on this tree (02079cb's code; the device copy's .git said
# 7c9da48, the code commit before it: run34_commit.txt), 113 s of device time left after it
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf; for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done; mkdir -p /root/data && cp -r .data/* /root/data/; git log -1 --format=%H > $OUT/run34_commit.txt; timeout 175 python3 examples/batch_bench.py --models default --time-limit-s 140 --out $OUT/run34_batch_default.json > $OUT/run34_batch_log.txt 2>&1; tail -22 $OUT/run34_batch_log.txt
