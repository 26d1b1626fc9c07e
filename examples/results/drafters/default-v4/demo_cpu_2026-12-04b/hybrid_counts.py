# One CPU demo run of auto with the hybrid's choices printed: per round that asked the learned
# half, the context's tail and the learned draft with (verified, accepted); at the end its counts
# by source (warm-up and timed session together: the plain replay does not use the drafter).
#   python examples/results/drafters/default-v4/demo_cpu_2026-12-04b/hybrid_counts.py > hybrid_counts.txt 2>&1
import agentspark.drafters.factory as factory
from agentspark.drafters import hybrid as H

built = {}
_build = factory.build_drafter


def build(*args, **kwargs):
    built["drafter"], built["tokenizer"] = _build(*args, **kwargs), args[1].tokenizer
    return built["drafter"]


factory.build_drafter = build
log = []
_use, _feedback, _lookup_first = H.HybridDrafter._use, H.HybridDrafter.feedback, H.HybridDrafter._lookup_first


def use(self, source, draft):
    if source is self.learned:
        log.append(["learned", draft.tokens.tolist(), None])
    return _use(self, source, draft)


def feedback(self, verified, accepted):
    if self.source is self.learned and log:
        log[-1][2] = (verified, accepted)
    return _feedback(self, verified, accepted)


def lookup_first(self, tokens, max_tokens):
    found, wants_learned = _lookup_first(self, tokens, max_tokens)
    if wants_learned:
        log.append(["context", tokens[-40:], None])
    return found, wants_learned


H.HybridDrafter._use, H.HybridDrafter.feedback, H.HybridDrafter._lookup_first = use, feedback, lookup_first
from agentspark.cli import main  # noqa: E402

main(["demo", "--drafter", "auto"])
tok = built["tokenizer"]
for kind, ids, outcome in log:
    print("LOG", kind, repr(tok.decode(ids)), "" if outcome is None else f"(verified, accepted) = {outcome}")
print("COUNTS", built["drafter"].counts, "gain", round(built["drafter"].gain, 4))
