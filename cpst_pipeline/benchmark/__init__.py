"""Benchmarks: scripts that print measured figures (never tests). See ``__main__`` and ``speed``."""
