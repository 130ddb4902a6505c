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
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neustream.catalog.diffusion import Program
    from neustream.request import Request

COLUMNS = ("module", "batch_size", "latency_s")


class TableError(ValueError):
    """A latency table that cannot be used; the message names the file and field."""


# A latency that falls by more than this much as the batch grows is not measurement noise: a
# larger batch in less than half the time of a smaller one (the tables measured here on a shared
# 2-core CPU, 5 calls a size, showed drops of up to 18% between neighbours).
FALL_TOLERANCE = 0.5


# The spread of measured times: these quantiles (0, 5, ..., 100 %) of the calls at one point.
QUANTILES = [i / 20 for i in range(21)]


def quantiles(xs) -> list[float]:
    """The QUANTILES of ``xs`` (linear between order statistics)."""
    xs = sorted(xs)
    n = len(xs)
    out = []
    for q in QUANTILES:
        pos = q * (n - 1)
        i = int(pos)
        j = min(i + 1, n - 1)
        out.append(xs[i] + (xs[j] - xs[i]) * (pos - i))
    return out


def table_rows(path: Path, columns):
    """(file line number, row) of a table CSV, '#' comment lines skipped. A missing file, a
    missing or unknown column, or a row with more or fewer fields than the header is a
    TableError naming the file (and line)."""
    if not path.is_file():
        raise TableError(f"latency table {path} does not exist")
    with path.open(newline="") as f:
        numbered = [(n, line) for n, line in enumerate(f, start=1) if not line.startswith("#")]
    reader = csv.DictReader(line for _, line in numbered)
    header = reader.fieldnames or ()
    missing = [c for c in columns if c not in header]
    if missing:
        raise TableError(f"{path}: missing column(s) {', '.join(missing)}")
    unknown = [c for c in header if c not in columns]
    if unknown:
        raise TableError(f"{path}: unknown column(s) {', '.join(unknown)}; a table has "
                         f"{', '.join(columns)}")
    for row in reader:
        n = numbered[reader.line_num - 1][0]
        if None in row or None in row.values():
            raise TableError(f"{path}:{n}: {len(header)} fields expected, as the header has")
        yield n, row


def read_sidecar(path: Path, program=None) -> dict:
    """The sidecar JSON of a table (``<table>.json``; {} when there is none); a TableError
    naming it when it is not a JSON object or was measured for another workload than
    ``program``."""
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise TableError(f"{side}: not a readable sidecar ({e})") from None
    if not isinstance(meta, dict):
        raise TableError(f"{side}: not a sidecar (a JSON object)")
    if program is not None and meta.get("workload") not in (None, program.name):
        raise TableError(f"{path}: measured for workload {meta['workload']!r} (its sidecar "
                         f"says), not {program.name!r}")
    return meta


def load_table(path: str | Path, program):
    """The latency table of ``program``, whatever its family: a LatencyTable for a diffusion
    program, an LlmLatencyModel for an LLM; checked against the program."""
    cls = LatencyTable if hasattr(program, "modules") and not hasattr(program, "config") \
        else LlmLatencyModel
    return cls.from_csv(path, program)


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
        """Load and check a table; with ``program``, also against it: its sidecar's workload,
        its modules, batch sizes within the program's grid, and no latency that falls with
        the batch size (beyond FALL_TOLERANCE). Errors name the file and rows."""
        path = Path(path)
        rows: dict[str, dict[int, float]] = {}
        lines: dict[tuple[str, int], int] = {}
        for n, row in table_rows(path, COLUMNS):
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
            lines[row["module"], b] = n
        table = cls(rows, source=str(path))
        if program is not None:
            read_sidecar(path, program)
            table.check(program)
            for module, by_size in rows.items():
                _check_curve(path, program.module(module), by_size, lines)
        return table

    def to_csv(self, path: str | Path) -> None:
        with Path(path).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for module, curve in self._curves.items():
                for b, s in zip(curve.sizes, curve.seconds):
                    w.writerow([module, b, repr(s)])

    def scaled(self, factor: float) -> LatencyTable:
        """This table on a device ``factor`` times slower (every entry; the same sizes)."""
        return LatencyTable({m: {b: factor * s for b, s in zip(c.sizes, c.seconds)}
                             for m, c in self._curves.items()}, source=f"{self.source} x{factor:g}")

    def check(self, program: Program) -> None:
        missing = [m for m in program.module_names if m not in self._curves]
        if missing:
            raise TableError(
                f"{self.source}: no rows for module(s) {', '.join(missing)} "
                f"of workload {program.name}"
            )
        unknown = [m for m in self._curves if m not in program.module_names]
        if unknown:
            raise TableError(f"{self.source}: module(s) {', '.join(unknown)} are not "
                             f"{program.name}'s ({', '.join(program.module_names)})")

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


def _check_curve(path: Path, module, by_size: dict[int, float], lines: dict) -> None:
    """A module's rows: batch sizes within its profiling grid, latency not falling with b."""
    name = module.name
    over = [b for b in by_size if b > module.max_batch]
    if over:
        raise TableError(f"{path}:{lines[name, max(over)]}: {name} at batch size {max(over)}, past "
                         f"its largest batch {module.max_batch}")
    for top, b in falls(by_size)[:1]:
        raise TableError(f"{path}:{lines[name, b]}: {name} takes {by_size[b]:.6g} s at b={b}, "
                         f"less than {1 - FALL_TOLERANCE:.0%} of {by_size[top]:.6g} s at "
                         f"b={top} (line {lines[name, top]}): latency must not fall as the "
                         f"batch grows")


def falls(by_size: dict[int, float]) -> list[tuple[int, int]]:
    """(b', b) pairs where batch size b takes less than (1 - FALL_TOLERANCE) of the slowest
    smaller size b'."""
    out, top = [], 0
    for b in sorted(by_size):
        if top and by_size[b] < (1 - FALL_TOLERANCE) * by_size[top]:
            out.append((top, b))
        if not top or by_size[b] > by_size[top]:
            top = b
    return out


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


# -- LLM engine steps ---------------------------------------------------------------------------

LLM_COLUMNS = ("module", "batch_size", "tokens", "latency_s")


def _fit_relative(x, y, nonneg: tuple[int, ...] = ()):
    """Least squares of ``x @ beta ~ y`` on relative errors; the coefficients named in
    ``nonneg`` are kept >= 0 by refitting without the offending ones (a few columns only)."""
    import numpy as np

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w = 1.0 / y  # relative error: small steps count as much as big ones
    active = list(range(x.shape[1]))
    while True:
        beta = np.zeros(x.shape[1])
        sol, *_ = np.linalg.lstsq(x[:, active] * w[:, None], y * w, rcond=None)
        beta[active] = sol
        bad = [i for i in active if i in nonneg and beta[i] < 0]
        if not bad:
            return beta
        active.remove(min(bad, key=lambda i: beta[i]))


class LlmLatencyModel:
    """Seconds per engine step of an LLM, fitted from a measured table.

    The CSV (``module,batch_size,tokens,latency_s``) holds measured steps:
    ``prefill`` rows are prefill-only steps of ``batch_size`` prompts of equal length with
    ``tokens`` prompt tokens in all; ``decode`` rows are decode-only steps of ``batch_size``
    sequences whose contexts sum to ``tokens``. The model fitted from them (least squares on
    relative error, at load time, so the table stays the only source):

    - prefill of prompts L_1..L_m with S = sum L tokens: as the artifact does it, the batch-1
      rows interpolated at S (flat below the shortest) while S is within them, else the fit
      ``theta0 + theta1 * S + theta2 * Q``, Q = sum L^2 (attention's quadratic cost), each
      theta >= 0, over all prefill rows;
    - decode of b sequences with contexts summing to X: ``a(b) + slope * X``, one intercept per
      measured batch size (interpolated linearly between them, extended along the last two past
      the largest) and one context slope >= 0;
    - a mixed step (vLLM V1's chunked prefill with decodes, simulator only): the prefill cost
      plus the decode cost, with the smaller fixed cost counted once.

    Isolated (batch-1) times, the SLO's unit: ``prefill_alone_s(P)`` and ``decode_alone_s(c)``.
    Optional ``vision`` rows (multimodal models: the image encoder and projector over
    ``batch_size`` images) give ``vision_s(b)``, interpolated in b; 0 without them.
    ``meta`` is the sidecar JSON (provenance; ``kv_capacity_tokens`` when measured).
    """

    def __init__(self, prefill: list[tuple[int, int, float]], decode: list[tuple[int, int, float]],
                 source: str = "<memory>", meta: dict | None = None,
                 vision: list[tuple[int, int, float]] | None = None) -> None:
        import numpy as np

        self.source = source
        self.meta = dict(meta or {})
        if len(prefill) < 3 or len({(b, s) for b, s, _ in prefill}) < 3:
            raise TableError(f"{source}: need at least 3 distinct prefill rows to fit, got {len(prefill)}")
        if not decode or 1 not in {b for b, _, _ in decode}:
            raise TableError(f"{source}: need decode rows, including batch_size 1")
        self.prefill_rows = sorted(prefill)
        self.decode_rows = sorted(decode)
        self.vision_rows = sorted(vision or [])
        by_b: dict[int, list[float]] = {}
        for b, _, t in self.vision_rows:
            by_b.setdefault(b, []).append(t)
        self.vision_b = tuple(sorted(by_b))
        self.vision_t = tuple(sorted(by_b[b])[len(by_b[b]) // 2] for b in self.vision_b)
        x = [(1.0, s, s * s / b) for b, s, _ in self.prefill_rows]
        self.theta = tuple(float(v) for v in _fit_relative(x, [t for *_, t in self.prefill_rows],
                                                           nonneg=(0, 1, 2)))
        alone = {s: t for b, s, t in self.prefill_rows if b == 1}
        self.prefill_b1 = (tuple(sorted(alone)), tuple(alone[s] for s in sorted(alone)))
        sizes = sorted({b for b, _, _ in self.decode_rows})
        col = {b: i for i, b in enumerate(sizes)}
        xd = np.zeros((len(self.decode_rows), len(sizes) + 1))
        for r, (b, ctx, _) in enumerate(self.decode_rows):
            xd[r, col[b]] = 1.0
            xd[r, -1] = ctx
        beta = _fit_relative(xd, [t for *_, t in self.decode_rows], nonneg=(len(sizes),))
        self.decode_sizes = tuple(sizes)
        self.decode_intercepts = tuple(max(float(v), 1e-9) for v in beta[:-1])
        self.decode_slope = float(beta[-1])

    # -- loading ---------------------------------------------------------------

    @classmethod
    def from_csv(cls, path: str | Path, program=None) -> LlmLatencyModel:
        path = Path(path)
        rows: dict[str, list[tuple[int, int, float]]] = {"prefill": [], "decode": [], "vision": []}
        lines: dict[int, tuple[str, int]] = {}  # file line -> (module, batch size)
        for n, row in table_rows(path, LLM_COLUMNS):
            if row["module"] not in rows:
                raise TableError(f"{path}:{n}: module must be prefill, decode or vision, "
                                 f"got {row['module']!r}")
            try:
                b, tokens, s = int(row["batch_size"]), int(row["tokens"]), float(row["latency_s"])
            except (TypeError, ValueError):
                raise TableError(
                    f"{path}:{n}: batch_size and tokens must be integers and latency_s a number, "
                    f"got {row['batch_size']!r}, {row['tokens']!r}, {row['latency_s']!r}") from None
            if b < 1 or tokens < 1 or not (s > 0 and math.isfinite(s)):
                raise TableError(f"{path}:{n}: need batch_size >= 1, tokens >= 1 and latency_s > 0")
            rows[row["module"]].append((b, tokens, s))
            lines[n] = (row["module"], b)
        meta = read_sidecar(path, program)
        if program is not None:
            over = [(b, n) for n, (m, b) in lines.items() if m != "vision"
                    and b > program.max_num_seqs]
            if over:
                b, n = max(over)
                raise TableError(f"{path}:{n}: batch size {b} is past {program.name}'s "
                                 f"max_num_seqs {program.max_num_seqs}")
        return cls(rows["prefill"], rows["decode"], source=str(path), meta=meta,
                   vision=rows["vision"])

    def to_csv(self, path: str | Path) -> None:
        with Path(path).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(LLM_COLUMNS)
            for module, rows in (("prefill", self.prefill_rows), ("decode", self.decode_rows),
                                 ("vision", self.vision_rows)):
                for b, tokens, s in rows:
                    w.writerow([module, b, tokens, repr(s)])

    def scaled(self, factor: float) -> LlmLatencyModel:
        """This model on a device ``factor`` times slower: every measured row stretched, refit."""
        def stretch(rows):
            return [(b, tokens, factor * s) for b, tokens, s in rows]

        return LlmLatencyModel(stretch(self.prefill_rows), stretch(self.decode_rows),
                               source=f"{self.source} x{factor:g}", meta=self.meta,
                               vision=stretch(self.vision_rows))

    def describe(self) -> dict:
        """The fitted coefficients and the fit's largest relative errors (for sidecars, logs)."""
        def worst(rows, fn):
            return max(abs(fn(b, t) / s - 1) for b, t, s in rows)

        return {
            "prefill_theta": list(self.theta),
            "decode_batch_sizes": list(self.decode_sizes),
            "decode_intercepts_s": list(self.decode_intercepts),
            "decode_slope_s_per_context_token": self.decode_slope,
            "prefill_max_rel_error": worst(self.prefill_rows, lambda b, t: self.prefill_s(t, t * t / b)),
            "decode_max_rel_error": worst(self.decode_rows, self.decode_s),
        }

    # -- queries ---------------------------------------------------------------

    def prefill_s(self, tokens: float, sq_tokens: float) -> float:
        """One prefill-only step over prompts with ``tokens`` in all and ``sq_tokens`` = sum L^2."""
        sizes, secs = self.prefill_b1
        if sizes and tokens <= sizes[-1]:
            i = bisect.bisect_left(sizes, tokens)
            if i == 0:
                return secs[0]
            w = (tokens - sizes[i - 1]) / (sizes[i] - sizes[i - 1])
            return secs[i - 1] * (1 - w) + secs[i] * w
        t0, t1, t2 = self.theta
        return t0 + t1 * tokens + t2 * sq_tokens

    def prefill_alone_s(self, prompt_tokens: int) -> float:
        """Isolated prefill of one prompt (the first-token SLO's unit)."""
        return self.prefill_s(prompt_tokens, prompt_tokens * prompt_tokens)

    def vision_s(self, images: int) -> float:
        """The image encoder over ``images`` images in one call (0 for text-only models or 0
        images); linear between measured sizes, extended along the last two."""
        sizes, secs = self.vision_b, self.vision_t
        if images <= 0 or not sizes:
            return 0.0
        if len(sizes) == 1:
            return secs[0] * images / sizes[0]
        i = min(max(bisect.bisect_left(sizes, images), 1), len(sizes) - 1)
        lo, hi = sizes[i - 1], sizes[i]
        if images < lo:
            return secs[0] * images / lo
        return max(secs[i - 1] + (secs[i] - secs[i - 1]) * (images - lo) / (hi - lo), 0.0)

    def decode_intercept_s(self, batch_size: int) -> float:
        sizes, a = self.decode_sizes, self.decode_intercepts
        if len(sizes) == 1:
            return a[0]
        i = bisect.bisect_left(sizes, batch_size)
        if i < len(sizes) and sizes[i] == batch_size:
            return a[i]
        i = min(max(i, 1), len(sizes) - 1)  # between sizes[i-1] and sizes[i], or past the last
        lo, hi = sizes[i - 1], sizes[i]
        return max(a[i - 1] + (a[i] - a[i - 1]) * (batch_size - lo) / (hi - lo), 1e-9)

    def decode_s(self, batch_size: int, context_tokens: float) -> float:
        """One decode-only step of ``batch_size`` sequences whose contexts sum to ``context_tokens``."""
        return self.decode_intercept_s(batch_size) + self.decode_slope * context_tokens

    def decode_alone_s(self, context_tokens: float) -> float:
        """Isolated decode step at one context length (the per-token SLO's unit)."""
        return self.decode_s(1, context_tokens)

    def mixed_s(self, tokens: float, sq_tokens: float, batch_size: int, context_tokens: float) -> float:
        """A step with prefill chunks (``tokens``, ``sq_tokens``) and ``batch_size`` decodes."""
        if batch_size == 0:
            return self.prefill_s(tokens, sq_tokens)
        if tokens == 0:
            return self.decode_s(batch_size, context_tokens)
        return (self.prefill_s(tokens, sq_tokens) + self.decode_s(batch_size, context_tokens)
                - min(self.theta[0], self.decode_intercept_s(1)))

    def slo_terms(self, prompt_tokens: int, pslo: float, dslo: float) -> tuple[float, float, float]:
        """(ttft_s, step0_s, step_inc_s) of a request: token 1 is due ``ttft_s`` after arrival and
        token j >= 2 ``ttft_s + (j-1) step0_s + step_inc_s (j-1) j / 2`` after it, which is
        ``pslo x prefill_alone(P) + dslo x sum_{i=1}^{j-1} decode_alone(P + i)`` in closed form."""
        a1 = self.decode_intercept_s(1)
        return (pslo * self.prefill_alone_s(prompt_tokens),
                dslo * (a1 + self.decode_slope * prompt_tokens),
                dslo * self.decode_slope)


def llm_capacity_rps(model: LlmLatencyModel, program, prompt_tokens: list[int],
                     output_tokens: list[int], kv_capacity_tokens: int | None = None) -> float:
    """Requests per second the engine could finish at best: full prefill batches (the token
    budget) plus decode steps at the largest batch that max_num_seqs and the KV cache allow, each
    request taking the mean prompt and output length (an upper bound on goodput in requests)."""
    p = sum(prompt_tokens) / len(prompt_tokens)
    o = sum(output_tokens) / len(output_tokens)
    k = max(1, int(program.max_num_batched_tokens // p))
    prefill = model.prefill_s(k * p, k * p * p) / k
    b = program.max_num_seqs
    if kv_capacity_tokens:
        b = max(1, min(b, int(kv_capacity_tokens // (p + o))))
    per_token = model.decode_s(b, b * (p + o / 2)) / b
    return 1.0 / (prefill + (o - 1) * per_token)


# -- multi-agent pipelines ----------------------------------------------------------------------


def exec_seconds(table_rows: list[dict]) -> dict[str, float]:
    """Median seconds per plotting program from exec-times rows (plot, seconds, status)."""
    by_plot: dict[str, list[float]] = {}
    for r in table_rows:
        by_plot.setdefault(str(r["plot"]), []).append(float(r["seconds"]))
    return {p: sorted(v)[len(v) // 2] for p, v in by_plot.items()}


EXEC_COLUMNS = ("plot", "repeat", "seconds", "status")


def read_exec_times(path: str | Path) -> dict[str, float]:
    """Median seconds per plotting program of an exec-times CSV (its ``ok`` rows); errors name
    the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"exec-times table {path} does not exist")
    rows = []
    for n, row in table_rows(path, EXEC_COLUMNS):
        try:
            seconds = float(row["seconds"])
        except ValueError:
            raise TableError(f"{path}:{n}: seconds must be a number, got {row['seconds']!r}") from None
        if not (seconds > 0 and math.isfinite(seconds)):
            raise TableError(f"{path}:{n}: seconds must be > 0, got {seconds}")
        if row["status"] == "ok":
            rows.append({"plot": row["plot"], "seconds": seconds})
    return exec_seconds(rows)


def agent_capacity_rps(program, models: dict[str, LlmLatencyModel], placement: dict[str, int],
                       rows: list[dict]) -> float:
    """Requests per second a pipeline (catalog.agent.AgentProgram) could finish at best: each
    device's busiest share of work per request (its instances' stages, each LLM stage's
    per-request time at full batches divided among its replicas), the slowest device bounding
    the pipeline."""
    from neustream.catalog.llm import get_llm_program

    load: dict[int, float] = {}
    for s in program.llm_stages:
        prog = get_llm_program(s.model)
        m = models[s.name]
        per_req = 1.0 / llm_capacity_rps(m, prog, [r[f"{s.name}_prompt"] for r in rows],
                                         [r[f"{s.name}_output"] for r in rows])
        per_req += m.vision_s(8 * s.images) / 8 if s.images else 0.0
        for inst in s.instances():
            load[placement[inst]] = load.get(placement[inst], 0.0) + per_req / s.replicas
    return 1.0 / max(load.values())
