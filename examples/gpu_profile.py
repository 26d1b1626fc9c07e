"""Where a speculative round's time goes on the GPU (device tool): per-round draft / verify /
other seconds against plain steps, and a CPU-side op profile of a few speculative rounds."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path


sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: kernels/, tools/ ... must not shadow PyPI packages of those names

from agentspark import Engine, NgramDrafter, SamplingParams, load_model  # noqa: E402
from agentspark.datasets import load_prompts  # noqa: E402
from agentspark.prompts import encode_prompt  # noqa: E402

target = load_model("default", dtype="bfloat16", device="cuda")
plain = Engine(target)
spec = Engine(target, NgramDrafter(), max_draft=8)
print("SPS", [round(s, 1) for s in spec.steps_per_second()])
records = load_prompts()
params = SamplingParams(max_new_tokens=128)
for r in records[6:9]:
    ids = encode_prompt(target.tokenizer, [{"role": "user", "content": r.turns[0]}])
    a = plain.generate(ids, params, speculative=False)
    b = spec.generate(ids, params)
    rs = b.stats.rounds
    print(r.dataset, "plain tok/s", round(a.stats.tokens_per_second, 1), "step ms",
          round(1000 * statistics.median(x.verify_s for x in a.stats.rounds), 2),
          "| spec tok/s", round(b.stats.tokens_per_second, 1), "tau", round(b.stats.mean_accepted_length, 2),
          "draft ms", round(1000 * statistics.median(x.draft_s for x in rs), 2),
          "verify ms", round(1000 * statistics.median(x.verify_s for x in rs), 2),
          "other ms", round(1000 * statistics.median(x.other_s for x in rs), 2),
          "verified/round", round(sum(x.verified for x in rs) / len(rs), 2))
from torch.profiler import ProfilerActivity, profile  # noqa: E402

ids = encode_prompt(target.tokenizer, [{"role": "user", "content": records[6].turns[0]}])
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    spec.generate(ids, SamplingParams(max_new_tokens=32))
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
