"""Placeholder; filled in by the pooling family work."""

LAYERS = ()
