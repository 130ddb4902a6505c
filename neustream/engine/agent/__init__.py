"""The multi-agent family's engines: the request flow between stages, simulator, live pipeline."""
