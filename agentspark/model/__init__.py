"""The model runtime: our Llama/Qwen decoder, its static KV cache, and loading."""
