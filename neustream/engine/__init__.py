"""Engines drive a policy over a trace: events.py (the simulators' core) and one subpackage per family."""
