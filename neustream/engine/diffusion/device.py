"""A measured device model for the diffusion simulator: how real batches differ from the table.

NOTE: the latency table gives one number per module and batch size; a real server's batches
vary around it. Fitted from live runs' batch records (``batches.jsonl``: every batch's module,
size, device seconds ``model_s`` and start/end on the wall clock) by ``fit``:
- ``ratios``: quantiles of device seconds over the table's time, per module (and per batch size
  where a size has ``MIN_SAMPLES`` batches); Clockwork's whole-request batches under
  the queue name of whole requests (``pipeline``), over the pipeline time the table gives;
- ``host_s``: quantiles of the host time each batch adds (its end minus the previous batch's end
  on its device, less its device seconds; batches right after an idle spell are left out), per
  module: the decision, bookkeeping and launch the table does not time;
- ``drift_sd``: the spread (standard deviation of the log) of a run's speed across the runs (its
  median ratio over the pooled one of each batch's module and size): clocks, the host's tenants.
A model can also come from a table alone (``from_spread``): the profiler keeps the quantiles of
each point's timed calls in the sidecar (``spread_s``), which give the ratios; no host time or
drift then (the profiler times calls back to back, with no decisions between them).
A simulated batch then takes ``table x drift x ratio + host``, the ratio and host drawn from
their quantiles and the drift once per run, all from ``random.Random(seed)``: a seed gives the
same records every time. The policy still decides on the table alone. Without a model the
simulator's batches take the table's time exactly.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from neustream.latency import QUANTILES, quantiles

if TYPE_CHECKING:
    from neustream.latency import LatencyTable

MIN_SAMPLES = 20  # batches of one size before that size gets its own ratios


def draw(qs: list[float], rng: random.Random) -> float:
    """One draw from the distribution with quantiles ``qs`` (inverse CDF, linear)."""
    u = rng.random() * (len(qs) - 1)
    i = int(u)
    return qs[i] + (qs[min(i + 1, len(qs) - 1)] - qs[i]) * (u - i)


@dataclass
class DeviceModel:
    ratios: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # module -> size|"all"
    host_s: dict[str, list[float]] = field(default_factory=dict)  # module -> quantiles
    drift_sd: float = 0.0
    meta: dict = field(default_factory=dict)

    def sampler(self, seed: int) -> Sampler:
        return Sampler(self, seed)

    # -- files ---------------------------------------------------------------------------

    def to_text(self) -> str:
        doc = {"ratios": self.ratios, "host_s": self.host_s, "drift_sd": self.drift_sd,
               "quantiles": QUANTILES, **self.meta}
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def from_json(cls, path: str | Path) -> DeviceModel:
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read the device model ({e})") from None
        for key in ("ratios", "host_s", "drift_sd"):
            if key not in doc:
                raise ValueError(f"{path}: the device model has no '{key}'")
        for where, qs in [(f"ratios.{m}.{k}", q) for m, by in doc["ratios"].items()
                          for k, q in by.items()] + [(f"host_s.{m}", q)
                                                     for m, q in doc["host_s"].items()]:
            if (len(qs) != len(QUANTILES) or any(b < a for a, b in zip(qs, qs[1:]))
                    or qs[0] < 0):
                raise ValueError(f"{path}: {where} must be {len(QUANTILES)} rising values >= 0")
        meta = {k: v for k, v in doc.items() if k not in ("ratios", "host_s", "drift_sd",
                                                          "quantiles")}
        return cls(doc["ratios"], doc["host_s"], float(doc["drift_sd"]), meta)


class Sampler:
    """One run's draws: its drift, then a ratio and a host time per batch."""

    def __init__(self, model: DeviceModel, seed: int) -> None:
        self.model = model
        self.rng = random.Random(seed)
        self.drift = math.exp(self.rng.gauss(0.0, model.drift_sd)) if model.drift_sd else 1.0

    def duration(self, module: str, size: int, table_s: float) -> float:
        by = self.model.ratios.get(module)
        ratio = 1.0
        if by:
            ratio = draw(by.get(str(size)) or by["all"], self.rng)
        host = self.model.host_s.get(module)
        return table_s * self.drift * ratio + (draw(host, self.rng) if host else 0.0)


# -- fitting ------------------------------------------------------------------------------------


def fit(runs: list[list[dict]], meta: dict | None = None) -> DeviceModel:
    """A device model from live runs, each given as its batch rows with ``table_s`` (the
    table's time for that batch) added."""
    ratio: dict[str, dict[str, list[float]]] = {}
    host: dict[str, list[float]] = {}
    for batches in runs:
        last_end: dict = {}
        for b in batches:
            by = ratio.setdefault(b["module"], {})
            r = b["model_s"] / b["table_s"]
            by.setdefault("all", []).append(r)
            by.setdefault(str(b["size"]), []).append(r)
            dev = b.get("device")
            prev, last_end[dev] = last_end.get(dev), b["end_s"]
            if prev is not None and not b.get("after_idle", True):
                host.setdefault(b["module"], []).append(max(b["end_s"] - prev - b["model_s"], 0.0))
    # a run's speed: its median ratio over the pooled median of each batch's module and size
    medians = {(m, k): statistics.median(v) for m, by in ratio.items() for k, v in by.items()}
    run_speed = [statistics.median(b["model_s"] / b["table_s"] / medians[b["module"], str(b["size"])]
                                   for b in batches) for batches in runs if batches]
    drift = statistics.stdev(math.log(x) for x in run_speed) if len(run_speed) > 1 else 0.0
    ratios = {m: {k: quantiles(v) for k, v in by.items() if k == "all" or len(v) >= MIN_SAMPLES}
              for m, by in ratio.items()}
    return DeviceModel(ratios, {m: quantiles(v) for m, v in host.items()}, drift,
                       dict(meta or {}, n_runs=len(runs), n_batches=sum(map(len, runs))))


def from_spread(spread_s: dict[str, dict[str, list[float]]], table: LatencyTable,
                meta: dict | None = None) -> DeviceModel:
    """A device model from a table's sidecar ``spread_s`` (module -> batch size -> quantiles of
    its timed calls, seconds): each point's ratios over the table's time; ``all``, per quantile,
    the median over the sizes."""
    ratios: dict[str, dict[str, list[float]]] = {}
    for module, by_size in spread_s.items():
        by = {b: [q / table.latency(module, int(b)) for q in qs] for b, qs in by_size.items()}
        by["all"] = [statistics.median(col) for col in zip(*by.values())]
        ratios[module] = by
    return DeviceModel(ratios, {}, 0.0, dict(meta or {}, source="profiler spread"))
