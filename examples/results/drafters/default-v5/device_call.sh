# default-v5 (issue 12): two drafters trained side by side on one H200, then evaluated against the
# shipped default (v4) and n-gram, then the agent demo with the better one in auto's place.
# Run after staging calls 1-3 (GPU.md), each call carrying [".stage/4", ".data", ".whl"].
# Data, all from earlier runs and committed (nothing generated here, never eval):
#   default-v3's samples (11,100 greedy + sampled answers to the train prompts), its 1,280 agent
#   sessions, and the 2,048 self-written chat requests with their 4,096 answers (self-chat/).
# Part T: v5a = default-v4's recipe (1 layer, bf16) on that data; v5b = 2 layers stored int8.
#   Both at once, --time-budget 480 each (we expected room for two on the GPU at ~0.06 s a step;
#   as it ran, each got about half of one's pace: 4,079 and 3,741 steps against default-v4's 7,457). Brought back as one tar split in 15 MiB parts (every file <= 16 MiB).
# Part E: eval-drafter, every drafted token verified (7), 10 prompts x 256 tokens per eval set,
#   T = 0 for v5a, v5b, default, ngram; T = 1 (6 prompts) for v5a, v5b, default.
# Part D: the demo, 5 alternating runs of ngram+<best v5> (what auto would be) and ngram, and the
#   best v5 alone while time is left; best = the higher mean greedy tau in part E.
set -u
part=${1:?T, E or D}
mkdir -p /root/stage /root/data /root/f
[ -f /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf ] || { cp .stage/4/* /root/stage/ && cat /root/stage/part-0* > /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf; }
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /root/stage/gguf-*.whl .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
cp -r .data/* /root/data/
{ git log --oneline -1; git status --short; echo "tree_sha256 $(bash examples/results/batch_h200/tree_sha256.sh)"; } > $OUT/v5${part}_commit.txt
AS='import sys; from agentspark.cli import main; sys.exit(main(sys.argv[1:]))'
V5A=learned:/root/work/v5a/drafter V5B=learned:/root/work/v5b/drafter
case $part in
T)
  train() {
    name=$1; shift
    mkdir -p /root/work/$name/data
    cp examples/results/drafters/default-v3/data/*.part-00 examples/results/drafters/self-chat/chat_*.part-00 /root/work/$name/data/
    timeout 570 python3 -c "$AS" train-drafter --target default --method dspark --device cuda --prompts /root/data/train \
      --out /root/work/$name --agent-sessions 1280 --agent-slots 64 --num-features 3 --markov-rank 32 \
      --draft-vocab 16384 --batch-size 16 --anchors 64 --max-length 1024 --steps 20000 --save-every 0 \
      --regen-max-new-tokens 320 --regen-batch-size 1024 --regen-answers 3 --regen-greedy --chat-prompts 2048 \
      --time-budget 480 "$@" > /root/f/$name.train.log 2>&1
    echo "$name rc=$?"; tail -c 600 /root/f/$name.train.log
    mkdir -p /root/f/$name && cp /root/work/$name/drafter/* /root/f/$name/ && cp /root/work/$name/report.json /root/f/$name.report.json
  }
  train v5a --num-layers 1 --storage bfloat16 &
  train v5b --num-layers 2 --storage int8 &
  wait
  ls -la /root/f /root/f/v5a /root/f/v5b
  tar -C /root/f -czf - . | split -b 15M -d -a 2 - $OUT/v5_train.tgz.part-
  ;;
E)
  timeout 230 python3 -c "$AS" eval-drafter --device cuda --dtype bfloat16 --gpu-mode fast --drafter $V5A --drafter $V5B --drafter default --drafter ngram --prompts /root/data/eval --limit 10 --max-new-tokens 256 --temperature 0.0 --json $OUT/eval_gpu_10x256_T0.json > $OUT/eval_T0.log 2>&1; echo "T0 rc=$?"; cp $OUT/eval_gpu_10x256_T0.json /root/eval_T0.json
  timeout 200 python3 -c "$AS" eval-drafter --device cuda --dtype bfloat16 --gpu-mode fast --drafter $V5A --drafter $V5B --drafter default --prompts /root/data/eval --limit 6 --max-new-tokens 256 --temperature 1.0 --json $OUT/eval_gpu_6x256_T1.json > $OUT/eval_T1.log 2>&1; echo "T1 rc=$?"
  python3 - "$OUT" <<'PY'
import json, sys, collections
for f in ("eval_gpu_10x256_T0.json", "eval_gpu_6x256_T1.json"):
    try:
        rows = json.load(open(f"{sys.argv[1]}/{f}"))
    except OSError:
        continue
    taus = collections.defaultdict(dict)
    for r in rows:
        taus[r["drafter"]][r["dataset"]] = round(r["tau"], 3)
    for d, t in taus.items():
        print(f, d, t, "mean", round(sum(t.values()) / len(t), 3))
PY
  ;;
D)
  best=$(python3 - "$OUT" <<'PY'
import json, sys, collections
rows = json.load(open("/root/eval_T0.json"))
taus = collections.defaultdict(list)
for r in rows:
    taus[r["drafter"]].append(r["tau"])
v5 = {d: sum(t) / len(t) for d, t in taus.items() if "/v5" in d}
print(max(v5, key=v5.get))
PY
)
  echo "best: $best"; echo "$best" > $OUT/demo_best.txt
  mkdir -p /root/demo
  for i in 1 2 3 4 5; do for d in ngram+$best ngram $best; do n=$(echo $d | sed 's#learned:/root/work/\(v5[ab]\)/drafter#\1#; s/+/_/'); case $n in v5?) [ $SECONDS -gt 470 ] && continue;; esac; [ $SECONDS -gt 520 ] && break 2; timeout 75 python3 -c "$AS" demo --device cuda --dtype bfloat16 --drafter $d > /root/demo/demo_${i}_$n.txt 2>&1; echo "$i $n rc=$? $(grep -E 'speedup over plain' /root/demo/demo_${i}_$n.txt | head -1)"; done; done
  grep -hE "audit \(greedy" /root/demo/demo_*.txt | sort | uniq -c
  tar -C /root/demo -czf $OUT/v5_demo.tgz .
  ;;
esac
