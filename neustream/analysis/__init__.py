"""Goodput tables and figures from run records, and live-server overhead (no engine here)."""
