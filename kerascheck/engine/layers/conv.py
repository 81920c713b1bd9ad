"""Placeholder; filled in by the conv family work."""

LAYERS = ()
