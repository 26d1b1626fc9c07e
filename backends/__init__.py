"""What an agent talks to (local speculative, local plain, OpenAI-compatible remote, scripted).

Installed as ``agentspark.backends``; filled in by the agent-runtime issue.
"""
