"""A diffusion workload served live: its stream modules (one ``Batcher`` each) and every
request's state, behind the calls the live engine makes (``engine.live.Server``).

The modules are those a latency table describes: ``table_modules`` reads the table's sidecar
JSON (torch device, model size, dtype, CUDA graphs), so a live run executes what its SLOs and
batch caps were computed from.

NOTE on placement: ``placement`` maps modules to devices ("cuda:0", "cuda:1", ...); unnamed
modules stay on the server's ``device``. Each distinct device is one executor of the live
engine (``groups``), whose batches run beside the other devices' batches. Every device has its
own pools; a request holds the same slot in all of them. When a request leaves a module whose
next module sits on another device, the rows that the next device reads and that a module on
another device last wrote (``StreamModule.writes``) are copied there, inside ``wait``, before
the engine moves the request on. Two CPU executors ("cpu:0", "cpu:1": torch puts both on the
CPU) exercise this on a machine without GPUs. Without a placement everything is on one device,
one executor, as before.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

import torch

from neustream.backends.devices import device_name, parse_dtype
from neustream.backends.diffusion.graphs import Batcher
from neustream.backends.diffusion.nets import Pools, State, make_module
from neustream.catalog.diffusion import check_placement, get_program

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


def device_key(spec: str, what: str = "device") -> str:
    """The executor name of a device string: "cuda" becomes "cuda:<current>", so one GPU is
    never two executors; CPU names are kept as given ("cpu:0" and "cpu:1" are two executors)."""
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what}: {spec!r} is not a torch device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what}: {spec} is not on this machine (no CUDA)")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"{what}: {spec} is not on this machine "
                             f"({torch.cuda.device_count()} GPU(s))")
        return f"cuda:{index}"
    return str(dev)


class DiffusionServer:
    """Runs batches of one workload's modules for requests at any step."""

    def __init__(self, workload: str, max_batch: Mapping[str, int], *, size: str = "tiny",
                 device: str = "cpu", dtype: str = "fp32", graphs: bool = False,
                 weights: str = "random", weights_dir: str | None = None, seed: int = 0,
                 keep_outputs: bool = False, pad: bool | None = None,
                 max_requests: int = 1024, placement: Mapping[str, str] | None = None) -> None:
        self.program = get_program(workload)
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"the latency table's modules run on {device}, which this machine lacks")
        check_placement(self.program, dict(placement or {}))
        home = device_key(device)
        placement = placement or {}
        # module -> executor name (a device string)
        self.placement = {m: device_key(placement[m], f"placement of {m}") if m in placement
                          else home for m in self.program.module_names}
        names = list(dict.fromkeys(self.placement.values()))
        self.devices = {n: torch.device(n) for n in names}
        self.settings = {"torch_device": str(torch.device(device)),
                         "device_name": device_name(torch.device(device)), "size": size,
                         "dtype": dtype, "weights": weights, "graphs": graphs}
        if len(names) > 1:
            self.settings["placement"] = dict(self.placement)
        self.seed = seed
        # one set of pools per device; row 0 is scratch
        self.pools = {n: Pools(max_requests + 1, d) for n, d in self.devices.items()}
        self.free = list(range(max_requests, 0, -1))  # slots of no request
        self.batchers: dict[str, Batcher] = {}
        for m in self.program.modules:
            where = self.placement[m.name]
            module = make_module(workload, m.name, size=size, device=self.devices[where],
                                 dtype=parse_dtype(dtype), weights=weights, weights_dir=weights_dir)
            module.attach(self.pools[where])
            self.batchers[m.name] = Batcher(module, max_batch[m.name], graphs=graphs, pad=pad)
        self._loop = {m.name: m.loop for m in self.program.modules}
        self._moves = self._plan_moves()
        self._sides = self._hand_off_streams()
        self.last = self.program.modules[-1].name
        loop = next((m.name for m in self.program.modules if m.loop), self.last)
        self._latents_at = self.placement[loop]
        self.states: dict[int, State] = {}
        self.keep_outputs = keep_outputs
        self.outputs: dict[int, torch.Tensor] = {}  # request id -> last output, with keep_outputs
        self.asynchronous = any(d.type == "cuda" for d in self.devices.values())

    def _plan_moves(self) -> dict[str, list[tuple[str, str, str]]]:
        """module -> (pool, from, to) copies for a request that leaves it: the next module's
        device gets every pool it holds whose last writer before it sits on another device."""
        mods = self.program.modules
        moves: dict[str, list[tuple[str, str, str]]] = {}
        for j in range(1, len(mods)):
            dst = self.placement[mods[j].name]
            todo = []
            for pool in self.pools[dst]:
                writers = [m.name for m in mods[:j] if pool in self.batchers[m.name].module.writes]
                if writers and self.placement[writers[-1]] != dst:
                    todo.append((pool, self.placement[writers[-1]], dst))
            if todo:
                moves[mods[j - 1].name] = todo
        return moves

    def prepare(self, sizes: list[int] | None = None) -> None:
        """Capture graphs or warm every batch size (or ``sizes``) up: before the clock starts."""
        for name, b in self.batchers.items():
            t0 = time.perf_counter()
            b.prepare([s for s in sizes if s <= b.max_batch] if sizes else None, warmup=True)
            mode = f"graphs at {len(b._captured)} sizes" if b.graphs else "eager"
            note = f" ({b.error})" if b.error else ""
            print(f"[serve] {name} on {self.placement[name]}: {mode} up to b={b.max_batch}, "
                  f"ready in {time.perf_counter() - t0:.1f} s{note}", file=sys.stderr, flush=True)

    def describe(self) -> dict:
        return {**self.settings,
                "graphs": {n: b.graphs for n, b in self.batchers.items()},
                "graph_errors": {n: b.error for n, b in self.batchers.items() if b.error}}

    # -- the engine's calls -------------------------------------------------------------

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Executor name (its device) -> its modules, in program order."""
        out: dict[str, tuple[str, ...]] = {}
        for m in self.program.module_names:
            out[self.placement[m]] = out.get(self.placement[m], ()) + (m,)
        return out

    @contextlib.contextmanager
    def executor(self, name: str) -> Iterator[None]:
        """Around an executor's loop, in its thread: its GPU is the current one, and inference
        mode is on once for the whole loop rather than entered at every call."""
        dev = self.devices[name]
        with torch.inference_mode():
            if dev.type == "cuda":
                with torch.cuda.device(dev):
                    yield
            else:
                yield

    def start(self, r: Request) -> None:
        if not self.free:
            raise RuntimeError(f"more than {len(self.free) + len(self.states)} requests in the "
                               f"server at once (DiffusionServer max_requests)")
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
        return self.pools[self._latents_at]["latents"][s.slot : s.slot + 1].clone()

    def launch(self, module: str, batch: list[Request], steps_done: list[int]):
        """Start one call of ``module`` (on CUDA: enqueued, not waited for); a handle for
        ``wait``."""
        states = [self.states[r.id] for r in batch]
        b = self.batchers[module]
        return (module, states, steps_done, b.launch(states, steps_done))

    def wait(self, handle) -> float:
        """Wait for a launched call; its model seconds. Moves the rows of the requests that
        leave the module to the next module's device, and keeps outputs when asked."""
        module, states, steps_done, ticket = handle
        b = self.batchers[module]
        model_s = b.wait(ticket)
        moves = self._moves.get(module)
        if moves:
            if self._loop[module]:
                leaving = [s.slot for s, k in zip(states, steps_done) if k + 1 >= s.steps]
            else:
                leaving = [s.slot for s in states]
            if leaving:
                self._move(leaving, moves)
        if self.keep_outputs and module == self.last:  # tests: keep each request's result
            out = b.last if b.module.__class__.__name__ == "VAEDecode" else None
            pool = self.pools[self.placement[module]]["latents"]
            for i, s in enumerate(states):
                s.output = (out[i : i + 1] if out is not None else
                            pool[s.slot : s.slot + 1]).clone()
        return model_s

    def _move(self, slots: list[int], moves: list[tuple[str, str, str]]) -> None:
        """Copy the rows of ``slots`` between devices; returns once they are in place. On a GPU
        the copies run on side streams with pinned indices: on the default stream they would
        queue behind the batch the other GPU is running (a replay runs on its default stream),
        and this executor would wait for that batch."""
        idx = torch.tensor(slots)
        for pool, src, dst in moves:
            s_pool, d_pool = self.pools[src][pool], self.pools[dst][pool]
            sides = self._sides.get((src, dst))
            if not sides:
                d_pool.index_copy_(0, idx, s_pool.index_select(0, idx))
                continue
            with contextlib.ExitStack() as on:
                for side in sides:
                    on.enter_context(torch.cuda.stream(side))
                pinned = idx.pin_memory()
                rows = s_pool.index_select(0, pinned.to(s_pool.device, non_blocking=True))
                d_pool.index_copy_(0, pinned.to(d_pool.device, non_blocking=True),
                                   rows.to(d_pool.device, non_blocking=True))
                for side in sides:
                    side.synchronize()

    def _hand_off_streams(self) -> dict[tuple[str, str], list[torch.cuda.Stream]]:
        """(from, to) -> a side stream on each of its GPUs, one set per direction, so that the
        two executors of a pair never wait for each other's copies (torch's pool streams do
        not wait for the default stream)."""
        out = {}
        for moves in self._moves.values():
            for _, src, dst in moves:
                gpus = dict.fromkeys(n for n in (src, dst) if self.devices[n].type == "cuda")
                if gpus:
                    out[(src, dst)] = [torch.cuda.Stream(self.devices[n]) for n in gpus]
        return out

    def run(self, module: str, batch: list[Request], steps_done: list[int]) -> float:
        return self.wait(self.launch(module, batch, steps_done))

    def run_pipeline(self, batch: list[Request]) -> float:
        """Whole requests end to end (all of one step count): every module, every step."""
        model_s = 0.0
        for m in self.program.modules:
            dev = self.devices[self.placement[m.name]]
            with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
                for k in range(batch[0].steps if m.loop else 1):
                    model_s += self.run(m.name, batch, [k] * len(batch))
        return model_s
