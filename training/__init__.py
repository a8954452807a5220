"""tympan.training: the speech LLM (encoder, projector, LLM + LoRA) and its three-stage training."""
