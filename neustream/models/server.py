"""A diffusion workload served live: its stream modules (one ``Batcher`` each) and every
request's state, behind the calls the live engine makes (``engine.live.Server``).

The modules are those a latency table describes: ``table_modules`` reads the table's sidecar
JSON (torch device, model size, dtype, CUDA graphs), so a live run executes what its SLOs and
batch caps were computed from.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch

from neustream.models.diffusion import Pools, State, make_module
from neustream.models.graphs import Batcher
from neustream.profiling import device_name, parse_dtype
from neustream.programs import get_program

if TYPE_CHECKING:
    from neustream.request import Request


def table_modules(latency_csv: str | Path) -> dict:
    """How the modules of a latency table were built: device, size, dtype, graphs."""
    sidecar = Path(latency_csv).with_suffix(".json")
    if not sidecar.is_file():
        raise ValueError(
            f"latency table {latency_csv} has no sidecar {sidecar.name}: a live run reads from it "
            f"which modules the table describes (device, size, dtype)")
    prov = json.loads(sidecar.read_text())
    missing = [k for k in ("device", "size", "dtype") if k not in prov]
    if missing:
        raise ValueError(f"{sidecar}: missing field(s) {', '.join(missing)}")
    graphs = bool(prov.get("method", {}).get("graphs", False))
    return {"device": prov["device"], "size": prov["size"], "dtype": prov["dtype"],
            "graphs": graphs, "device_name": prov.get("device_name")}


class DiffusionServer:
    """Runs batches of one workload's modules for requests at any step."""

    def __init__(self, workload: str, max_batch: Mapping[str, int], *, size: str = "tiny",
                 device: str = "cpu", dtype: str = "fp32", graphs: bool = False,
                 weights: str = "random", weights_dir: str | None = None, seed: int = 0,
                 keep_outputs: bool = False, pad: bool | None = None,
                 max_requests: int = 1024) -> None:
        self.program = get_program(workload)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"the latency table's modules run on {device}, which this machine lacks")
        self.settings = {"torch_device": str(self.device), "device_name": device_name(self.device),
                         "size": size, "dtype": dtype, "weights": weights, "graphs": graphs}
        self.seed = seed
        self.pools = Pools(max_requests + 1, self.device)  # row 0: scratch
        self.free = list(range(max_requests, 0, -1))  # slots of no request
        self.batchers: dict[str, Batcher] = {}
        for m in self.program.modules:
            module = make_module(workload, m.name, size=size, device=self.device,
                                 dtype=parse_dtype(dtype), weights=weights, weights_dir=weights_dir)
            module.attach(self.pools)
            self.batchers[m.name] = Batcher(module, max_batch[m.name], graphs=graphs, pad=pad)
        self.last = self.program.modules[-1].name
        self.states: dict[int, State] = {}
        self.keep_outputs = keep_outputs
        self.outputs: dict[int, torch.Tensor] = {}  # request id -> last output, with keep_outputs

    def prepare(self, sizes: list[int] | None = None) -> None:
        """Capture graphs or warm every batch size (or ``sizes``) up: before the clock starts."""
        for name, b in self.batchers.items():
            t0 = time.perf_counter()
            b.prepare([s for s in sizes if s <= b.max_batch] if sizes else None, warmup=True)
            mode = f"graphs at {len(b._captured)} sizes" if b.graphs else "eager"
            note = f" ({b.error})" if b.error else ""
            print(f"[serve] {name}: {mode} up to b={b.max_batch}, ready in "
                  f"{time.perf_counter() - t0:.1f} s{note}", file=sys.stderr, flush=True)

    def describe(self) -> dict:
        return {**self.settings,
                "graphs": {n: b.graphs for n, b in self.batchers.items()},
                "graph_errors": {n: b.error for n, b in self.batchers.items() if b.error}}

    # -- the engine's calls -------------------------------------------------------------

    def start(self, r: Request) -> None:
        if not self.free:
            raise RuntimeError(f"more than {self.pools.rows - 1} requests in the server at once "
                               f"(DiffusionServer max_requests)")
        s = State(id=r.id, steps=r.steps, seed=self.seed, slot=self.free.pop(),
                  prompt=int(r.fields.get("prompt_index", 0)),
                  label=int(r.fields.get("class_label", 0)))
        with torch.inference_mode():
            for b in self.batchers.values():
                b.module.init_state(s)
        self.states[r.id] = s

    def end(self, r: Request) -> None:
        s = self.states.pop(r.id, None)
        if s is not None:
            self.free.append(s.slot)
            if self.keep_outputs and s.output is not None:
                self.outputs[r.id] = s.output

    def latents(self, r: Request) -> torch.Tensor:
        """A copy of the request's current latents (Palette: its image)."""
        s = self.states[r.id]
        return self.pools["latents"][s.slot : s.slot + 1].clone()

    def run(self, module: str, batch: list[Request], steps_done: list[int]) -> float:
        states = [self.states[r.id] for r in batch]
        b = self.batchers[module]
        model_s = b.run(states, steps_done)
        if self.keep_outputs and module == self.last:  # tests: keep each request's result
            out = b.last if b.module.__class__.__name__ == "VAEDecode" else None
            for i, s in enumerate(states):
                s.output = (out[i : i + 1] if out is not None else
                            self.pools["latents"][s.slot : s.slot + 1]).clone()
        return model_s

    def run_pipeline(self, batch: list[Request]) -> float:
        """Whole requests end to end (all of one step count): every module, every step."""
        model_s = 0.0
        for m in self.program.modules:
            for k in range(batch[0].steps if m.loop else 1):
                model_s += self.run(m.name, batch, [k] * len(batch))
        return model_s
