"""tympan.daemon: serving from an exported bundle (no training code, no torch for the encoder)."""
