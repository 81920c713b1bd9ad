"""Placeholder; filled in by the merging family work."""

LAYERS = ()
