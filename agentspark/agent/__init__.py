"""Agent-loop helpers: tool-call parsing and tool prompts for local chat models."""
