"""tympan.export: from a training checkpoint to a verified serving bundle."""
