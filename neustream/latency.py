"""Latency tables: measured seconds per module call, by batch size.

A table is a CSV with columns ``module,batch_size,latency_s`` (one denoising step
for a loop module, one whole call otherwise), one file per workload and device,
with a sidecar JSON saying how it was measured. Batch sizes between measured
points are interpolated linearly; sizes past the largest measured one are not
served. The table is loaded once, validated, and passed to whoever needs it.
"""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neustream.programs import Program
    from neustream.request import Request

COLUMNS = ("module", "batch_size", "latency_s")


class TableError(ValueError):
    """A latency table that cannot be used; the message names the file and field."""


@dataclass(frozen=True)
class _Curve:
    sizes: tuple[int, ...]  # measured batch sizes, ascending, starting at 1
    seconds: tuple[float, ...]

    def at(self, b: int) -> float:
        i = bisect.bisect_left(self.sizes, b)
        if i < len(self.sizes) and self.sizes[i] == b:
            return self.seconds[i]
        lo, hi = self.sizes[i - 1], self.sizes[i]
        w = (b - lo) / (hi - lo)
        return self.seconds[i - 1] * (1 - w) + self.seconds[i] * w


class LatencyTable:
    """Seconds per call of each module at each batch size."""

    def __init__(self, rows: dict[str, dict[int, float]], source: str = "<memory>"):
        self.source = source
        self._curves: dict[str, _Curve] = {}
        for module, by_size in rows.items():
            if 1 not in by_size:
                raise TableError(f"{source}: module {module!r} has no batch_size 1 row")
            sizes = tuple(sorted(by_size))
            self._curves[module] = _Curve(sizes, tuple(by_size[b] for b in sizes))
        if not self._curves:
            raise TableError(f"{source}: no rows")

    # -- loading ---------------------------------------------------------------

    @classmethod
    def from_csv(cls, path: str | Path, program: Program | None = None) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise TableError(f"latency table {path} does not exist")
        rows: dict[str, dict[int, float]] = {}
        with path.open(newline="") as f:
            # Keep file line numbers for errors while skipping '#' comment lines.
            numbered = [(n, line) for n, line in enumerate(f, start=1) if not line.startswith("#")]
            reader = csv.DictReader(line for _, line in numbered)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise TableError(f"{path}: missing column(s) {', '.join(missing)}")
            for row in reader:
                n = numbered[reader.line_num - 1][0]
                try:
                    b = int(row["batch_size"])
                    s = float(row["latency_s"])
                except (TypeError, ValueError):
                    raise TableError(
                        f"{path}:{n}: batch_size must be an integer and latency_s a number, "
                        f"got {row['batch_size']!r}, {row['latency_s']!r}"
                    ) from None
                if b < 1 or not (s > 0 and math.isfinite(s)):
                    raise TableError(f"{path}:{n}: need batch_size >= 1 and latency_s > 0")
                by_size = rows.setdefault(row["module"], {})
                if b in by_size:
                    raise TableError(f"{path}:{n}: duplicate row for {row['module']} b={b}")
                by_size[b] = s
        table = cls(rows, source=str(path))
        if program is not None:
            table.check(program)
        return table

    def to_csv(self, path: str | Path) -> None:
        with Path(path).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for module, curve in self._curves.items():
                for b, s in zip(curve.sizes, curve.seconds):
                    w.writerow([module, b, repr(s)])

    def check(self, program: Program) -> None:
        missing = [m for m in program.module_names if m not in self._curves]
        if missing:
            raise TableError(
                f"{self.source}: no rows for module(s) {', '.join(missing)} "
                f"of workload {program.name}"
            )

    # -- queries ---------------------------------------------------------------

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(self._curves)

    def max_batch(self, module: str) -> int:
        return self._curves[module].sizes[-1]

    def latency(self, module: str, batch_size: int) -> float:
        """Seconds for one call of ``module`` on ``batch_size`` requests."""
        curve = self._curves[module]
        if not 1 <= batch_size <= curve.sizes[-1]:
            raise ValueError(
                f"batch size {batch_size} of {module} is outside the table (1..{curve.sizes[-1]})"
            )
        return curve.at(batch_size)

    def best_per_request(self, module: str) -> float:
        """Least seconds per request over all batch sizes (the module's peak throughput)."""
        curve = self._curves[module]
        return min(s / b for b, s in zip(curve.sizes, curve.seconds))


# -- SLO arithmetic ---------------------------------------------------------------


def calls(program: Program, request: Request) -> list[int]:
    """Calls of each module that ``request`` needs in total."""
    return [request.steps if m.loop else 1 for m in program.modules]


def remaining_s(program: Program, table: LatencyTable, request: Request) -> float:
    """Stand-alone (batch-1) seconds the request still needs from where it stands."""
    total = 0.0
    for i, m in enumerate(program.modules):
        if i < request.stage:
            continue
        n = request.steps if m.loop else 1
        if i == request.stage:
            n -= request.calls_done
        total += n * table.latency(m.name, 1)
    return total


def standalone_s(program: Program, table: LatencyTable, steps: int) -> float:
    """Batch-1 latency of a whole request with ``steps`` steps: every module, every step."""
    return sum((steps if m.loop else 1) * table.latency(m.name, 1) for m in program.modules)


def deadline_s(arrival_s: float, slo: float, standalone: float) -> float:
    """Absolute deadline: arrival + slo x stand-alone batch-1 latency."""
    return arrival_s + slo * standalone


def pipeline_s(program: Program, table: LatencyTable, steps: int, batch_size: int) -> float:
    """Seconds to run a whole batch of requests with ``steps`` steps end to end (Clockwork)."""
    return sum(
        (steps if m.loop else 1) * table.latency(m.name, batch_size) for m in program.modules
    )


def capacity_rps(program: Program, table: LatencyTable, mean_steps: float) -> float:
    """Most requests per second the device could finish, each module at its most
    efficient batch size (an upper bound on goodput)."""
    per_request = sum(
        (mean_steps if m.loop else 1) * table.best_per_request(m.name) for m in program.modules
    )
    return 1.0 / per_request
