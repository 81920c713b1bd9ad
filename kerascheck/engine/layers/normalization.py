"""Placeholder; filled in by the normalization family work."""

LAYERS = ()
