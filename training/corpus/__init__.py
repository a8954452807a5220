"""Corpora tympan builds from installed packages: real recordings, synthetic speech, parallel text."""
