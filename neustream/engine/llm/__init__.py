"""The LLM family's engines: one engine's state (vLLM mechanics), simulator, live trace replay."""
