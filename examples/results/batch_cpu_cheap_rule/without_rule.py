"""How without_rule.json was measured (2026-12-03, AMD EPYC, 2 cores, at 2bd6fad's code): batch_bench
with DraftingRates.HOST_SHARE = -1, so drafting is never cheap and the whole-round comparison always
decides (the rule before 84a95ff). with_rule.json is the same command without the patch:
    python examples/batch_bench.py --concurrency 1 --modes plain,k3,adaptive --no-solo --out with_rule.json
    python examples/results/batch_cpu_cheap_rule/without_rule.py --concurrency 1 --modes plain,k3,adaptive --no-solo --out without_rule.json
(The JSON's "command" field names batch_bench.py for both: the patch is this wrapper's.)"""

import runpy
import sys
from pathlib import Path

from agentspark.drafting_rates import DraftingRates

DraftingRates.HOST_SHARE = -1.0
script = Path(__file__).resolve().parents[2] / "batch_bench.py"
sys.argv = [str(script)] + sys.argv[1:]
runpy.run_path(str(script), run_name="__main__")
