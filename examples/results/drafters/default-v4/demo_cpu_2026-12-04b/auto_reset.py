# the demo with auto, the hybrid's gate state (gain, skipped) set back to its start after the warm-up
import sys
import agentspark.commands.demo as demo
orig = demo.warm_engines
def warm(spec_engine, plain_engine):
    orig(spec_engine, plain_engine)
    d = spec_engine.drafter
    d.gain, d.skipped = 1.0, 0
demo.warm_engines = warm
from agentspark.cli import main
sys.exit(main(["demo", "--drafter", "auto"]))
