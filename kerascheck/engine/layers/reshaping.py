"""Placeholder; filled in by the reshaping family work."""

LAYERS = ()
