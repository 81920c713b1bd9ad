"""Pure functions from results to rich renderables, JSON documents and strings."""
