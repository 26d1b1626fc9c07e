"""Tool definitions, registry and built-in tools. Installed as ``agentspark.tools``; filled in by the
agent-runtime issue."""
