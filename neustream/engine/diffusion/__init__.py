"""The diffusion family's engines: run state, simulator, live executor."""
