"""LLM step policies: what each engine step runs (base.py states the contract)."""
