"""Command-line options made from RunSpec's fields, and the RunSpec a verb's arguments give.

Every option defaults to "not given" (argparse.SUPPRESS), so a verb knows what was asked for:
an option of another family is refused with one line naming it; the rest take RunSpec's
defaults.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import fields
from pathlib import Path

from neustream.catalog import family_of
from neustream.runs.spec import RunSpec

REQUIRED = ("workload", "system", "rate", "cv", "slo", "latency", "out")
CHOICES = {"weights": ("random", "pretrained"), "graphs": ("table", "on", "off"),
           "engine_device": ("cpu", "cuda")}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _type(hint):
    """The argparse type of a field's annotation (``X | None`` -> X)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_run_args(parser: argparse.ArgumentParser, backend: str) -> None:
    """One option per RunSpec field that a run on ``backend`` reads (any family)."""
    hints = typing.get_type_hints(RunSpec)
    for f in fields(RunSpec):
        if backend not in f.metadata["backends"]:
            continue
        families = f.metadata["families"]
        help = f.metadata["help"] + ("" if len(families) == 3 else f" [{', '.join(families)}]")
        kw: dict = {"help": help, "default": argparse.SUPPRESS, "required": f.name in REQUIRED}
        kind = _type(hints[f.name])
        if kind is bool:
            kw["action"] = "store_true"
        elif f.name == "sweeps":
            kw["type"] = lambda text: tuple(s for s in text.split(",") if s)
        else:
            kw["type"] = kind if kind in (int, float, Path) else str
            if f.name in CHOICES:
                kw["choices"] = CHOICES[f.name]
        parser.add_argument(flag(f.name), **kw)


def spec_from_args(a: argparse.Namespace, backend: str) -> RunSpec:
    """The RunSpec of a verb's arguments; an option that does not apply to the workload's
    family is a one-line ValueError."""
    given = {f.name: getattr(a, f.name) for f in fields(RunSpec) if hasattr(a, f.name)}
    family = family_of(given["workload"])
    for f in fields(RunSpec):
        if f.name in given and family not in f.metadata["families"]:
            raise ValueError(f"{flag(f.name)} does not apply to {family} workloads "
                             f"({given['workload']}); it is for {', '.join(f.metadata['families'])}")
    return RunSpec(**given)
