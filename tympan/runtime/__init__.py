"""The serving runtime: load a verified bundle and run it (encoder graph, prompts, LLM, greedy decoding)."""
