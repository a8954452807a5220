"""tympan.training: the speech LLM (`training.model`) and its three-stage training, corpus and tools."""
