"""Producers of latency tables: diffusion modules, LLM engine steps, code run times."""
