"""Diffusion modules served live: networks, request pools, CUDA graphs, the server, weights."""
