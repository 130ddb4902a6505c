"""The command line: `neustream <verb>` (main.py), options made from RunSpec (args.py)."""

from neustream.cli.main import main

__all__ = ["main"]
