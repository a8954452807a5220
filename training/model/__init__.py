"""The speech LLM as PyTorch modules: encoder, projector, LLM + LoRA, prompts, checkpoints. No training procedure."""
