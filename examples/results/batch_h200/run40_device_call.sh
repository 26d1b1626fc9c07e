# run 40: one call right after staging calls 1-3 (GPU.md), carrying [".stage/4", ".data", ".whl"]
# (.whl: pydantic 2.12.5, pydantic-core 2.41.5, annotated-types 0.7.0, typing-inspection 0.4.2,
# tenacity 9.1.2, llguidance 1.9.1). Prepared 2026-12-04 (second session of the day), after the
# adaptive schedule's host work was cut on the CPU (examples/batch_host_cost.py; the same lengths
# and the same choices, only cheaper).
# Part P: where the demo session's prefill time goes on the GPU, n-gram against auto
#   (examples/session_prefill_phases.py --session demo; run 36 found auto's round 0 prefill at
#   ~30 ms against n-gram's 24, and the CPU run could not tell the parts apart).
# Part B: the default model's batch table under a steady load (--waves 4) at C = 4, 16, 64, for
#   plain, k1, k3 (the best fixed lengths of runs 38-39 there) and adaptive.
. examples/device_preamble.sh run40
timeout 110 python3 examples/session_prefill_phases.py --session demo --drafter ngram --drafter auto --device cuda --dtype bfloat16 --repeats 3 --out $OUT/run40_prefill_phases_demo.json > $OUT/run40_prefill_phases_demo.txt 2>&1; echo "P rc=$?"; tail -30 $OUT/run40_prefill_phases_demo.txt
timeout 330 python3 examples/batch_bench.py --models default --waves 4 --concurrency 4,16,64 --modes plain,k1,k3,adaptive --time-limit-s 260 --out $OUT/run40_batch_default_w4.json > $OUT/run40_batch_default_w4_log.txt 2>&1; echo "B rc=$?"; tail -20 $OUT/run40_batch_default_w4_log.txt
