"""The only code that runs real models: diffusion networks, vLLM engines, the code sandbox."""
