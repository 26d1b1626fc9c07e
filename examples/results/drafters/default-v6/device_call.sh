# default-v6 (issue 12), for the next session with device time: ONE drafter, alone on the GPU,
# trained in two calls on one warm machine (~1,000 s of training, 2x default-v4's 477 s), then
# evaluated; prepared 2026-12-04 after default-v5 (two drafters at once got half the steps each).
# Shape: v5b's (2 layers, stored int8, 10.2 MiB: matched default-v4's greedy mean at half its
# steps, with the chat data lifting mt-bench). Data: the same 15,196 committed samples.
# Calls, one block, after staging calls 1-3 (GPU.md), each carrying [".stage/4", ".data", ".whl"]:
#   T1: --steps 16000 --stop-after 540 (a fixed schedule, checkpoint in /root/work/v6);
#   T2: --resume --time-budget 520: the schedule re-fitted (only shortened) into what is left,
#       then calibration and export; drafter, report and log brought back (one tar, < 16 MiB);
#   E:  eval-drafter T = 0 (10 prompts x 256) for v6, default, ngram and T = 1 (6 prompts) for
#       v6, default; then, while time is left, the demo alternating ngram+v6 and ngram.
# ~1,800 s of device time in all: start ~90, staging ~10, T1 ~575, T2 ~560, E ~450.
part=${1:?T1, T2 or E}
. examples/device_preamble.sh v6$part
V6=learned:/root/work/v6/drafter
TRAIN="train-drafter --target default --method dspark --device cuda --prompts /root/data/train --out /root/work/v6
  --agent-sessions 1280 --agent-slots 64 --num-layers 2 --num-features 3 --markov-rank 32 --draft-vocab 16384
  --storage int8 --batch-size 16 --anchors 64 --max-length 1024 --steps 16000 --save-every 0
  --regen-max-new-tokens 320 --regen-batch-size 1024 --regen-answers 3 --regen-greedy --chat-prompts 2048"
case $part in
T1)
  mkdir -p /root/work/v6/data
  cp examples/results/drafters/default-v3/data/*.part-00 examples/results/drafters/self-chat/chat_*.part-00 /root/work/v6/data/
  timeout 585 python3 -c "$AS" $TRAIN --stop-after 540 > $OUT/v6_train1.log 2>&1; echo "T1 rc=$?"; tail -c 700 $OUT/v6_train1.log
  cp /root/work/v6/report.json $OUT/v6_report_after_T1.json
  ;;
T2)
  timeout 585 python3 -c "$AS" $TRAIN --resume --time-budget 520 > $OUT/v6_train2.log 2>&1; echo "T2 rc=$?"; tail -c 700 $OUT/v6_train2.log
  cp -r /root/work/v6/drafter /root/f/ && cp /root/work/v6/report.json /root/f/v6_report.json
  tar -C /root/f -czf $OUT/v6_drafter.tgz . && ls -la $OUT
  ;;
E)
  timeout 200 python3 -c "$AS" eval-drafter --device cuda --dtype bfloat16 --gpu-mode fast --drafter $V6 --drafter default --drafter ngram --prompts /root/data/eval --limit 10 --max-new-tokens 256 --temperature 0.0 --json $OUT/eval_gpu_10x256_T0.json > $OUT/eval_T0.log 2>&1; echo "T0 rc=$?"
  timeout 150 python3 -c "$AS" eval-drafter --device cuda --dtype bfloat16 --gpu-mode fast --drafter $V6 --drafter default --prompts /root/data/eval --limit 6 --max-new-tokens 256 --temperature 1.0 --json $OUT/eval_gpu_6x256_T1.json > $OUT/eval_T1.log 2>&1; echo "T1 rc=$?"
  python3 examples/eval_summary.py $OUT/eval_gpu_10x256_T0.json $OUT/eval_gpu_6x256_T1.json
  mkdir -p /root/demo
  for i in 1 2 3 4 5; do for d in ngram+$V6 ngram; do [ $SECONDS -gt 520 ] && break 2; n=$(echo $d | sed 's#learned:/root/work/v6/drafter#v6#; s/+/_/'); timeout 60 python3 -c "$AS" demo --device cuda --dtype bfloat16 --drafter $d > /root/demo/demo_${i}_$n.txt 2>&1; echo "$i $n rc=$? $(grep -E 'speedup over plain' /root/demo/demo_${i}_$n.txt | head -1)"; done; done
  grep -hE "audit \(greedy" /root/demo/demo_*.txt | sort | uniq -c
  tar -C /root/demo -czf $OUT/v6_demo.tgz .
  ;;
esac
