"""vLLM: the NeuStream scheduler plug-ins, in-process and per-process engines, model folders."""
