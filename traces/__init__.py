"""Trace schema, recorder, replay, report and plots. Installed as ``agentspark.traces``; filled in
by the agent-runtime issue."""
