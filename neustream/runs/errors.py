"""The error a run raises when it cannot be done as asked; the CLI prints it as one line."""


class RunError(RuntimeError):
    """A run that could not be done (weights missing, a live run stopped early, ...)."""
