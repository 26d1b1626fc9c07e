"""Pieces of the LangChain integration; the chat model itself is ``agentspark.langchain_chat``."""
