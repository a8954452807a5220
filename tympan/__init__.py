"""tympan: instruction-following speech LLM (ASR, ST, SQA) and its streaming daemon."""

__version__ = "0.1.0"
