"""Looking a name up in one of the catalog's tables, with one error wording for all."""

from __future__ import annotations


def lookup(entries: dict, name: str, what: str):
    """``entries[name]``; a one-line ValueError naming the choices when there is none."""
    try:
        return entries[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(entries)}") from None
