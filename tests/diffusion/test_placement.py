"""Modules placed on several devices: one executor per device, batches of different devices at
once, nothing lost, deadlines honoured, records valid, and a request comes out the same as
from the one-executor server (two CPU executors stand in for two GPUs)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from neustream.backends.diffusion.server import DiffusionServer
from neustream.catalog.diffusion import parse_placement
from neustream.engine.diffusion.live import LiveError, serve
from neustream.latency import LatencyTable
from neustream.policy import make_policy
from neustream.record import BATCHES, REQUESTS
from neustream.request import Request
from neustream.runs.diffusion import serve_to_dir
from neustream.traces import make_trace, to_requests
from tests.support import SD, read_jsonl

TABLE = LatencyTable({
    "text_encoder": {1: 0.003, 32: 0.004},
    "unet": {1: 0.004, 8: 0.0054, 32: 0.0102},
    "vae": {1: 0.005, 4: 0.008, 32: 0.05},
})
GROUPS = {"gpu-a": ("text_encoder", "vae"), "gpu-b": ("unet",)}


class PlacedSleepServer:
    """Sleeps the table's time per call; one device per group, which runs one batch at a time
    (checked). Records every request's calls and whether two devices ever ran at once."""

    def __init__(self, table=TABLE, groups=GROUPS, fail_at: int | None = None) -> None:
        self.table, self.groups_ = table, groups
        self.device_of = {m: g for g, ms in groups.items() for m in ms}
        self.lock = threading.Lock()
        self.running: dict[str, int] = {g: 0 for g in groups}
        self.overlapped = False
        self.calls: dict[int, list[tuple[str, int]]] = {}
        self.started: set[int] = set()
        self.fail_at, self.n = fail_at, 0

    def groups(self):
        return self.groups_

    def start(self, r):
        self.started.add(r.id)

    def end(self, r):
        self.started.discard(r.id)

    def run(self, module, batch, steps_done):
        g = self.device_of[module]
        with self.lock:
            self.n += 1
            if self.n == self.fail_at:
                raise torch.OutOfMemoryError("injected: out of memory")
            assert self.running[g] == 0, f"two batches at once on {g}"
            self.running[g] += 1
            self.overlapped |= sum(self.running.values()) > 1
            for r, k in zip(batch, steps_done):
                self.calls.setdefault(r.id, []).append((module, k))
        s = self.table.latency(module, len(batch))
        time.sleep(s)
        with self.lock:
            self.running[g] -= 1
        return s

    def run_pipeline(self, batch):  # pragma: no cover - stream policies only
        raise NotImplementedError


def _requests(rate=40.0, n=40, slo=3.0):
    return to_requests(make_trace(SD, rate, 2.0, n, 0), SD, TABLE, slo)


def test_two_devices_run_at_once_and_lose_nothing(tmp_path):
    server = PlacedSleepServer()
    s = serve_to_dir(tmp_path / "run", make_policy("neustream", SD, TABLE, 3.0), server,
                     _requests(), TABLE, {"system": "neustream"})
    assert s["n_ok"] + s["n_late"] + s["n_dropped"] == s["n_requests"] == 40
    assert s["n_ok"] > 0 and not server.started  # every request's state was freed
    assert server.overlapped  # the two devices did run batches side by side
    rows = read_jsonl(tmp_path / "run" / REQUESTS)
    assert sorted(r["id"] for r in rows) == list(range(40))
    for r in rows:
        if r["status"] == "ok":
            assert r["finish_s"] <= r["deadline_s"]
        elif r["status"] == "late":
            assert r["finish_s"] > r["deadline_s"]
        if r["status"] != "dropped":  # every call once, in order: the stream's bookkeeping
            want = [("text_encoder", 0)] + [("unet", k) for k in range(r["steps"])] + [("vae", 0)]
            assert server.calls[r["id"]] == want, r["id"]
    batches = read_jsonl(tmp_path / "run" / BATCHES)
    assert {"module", "start_s", "end_s", "size", "ids", "model_s", "after_idle",
            "device"} <= set(batches[0])
    for b in batches:
        assert b["device"] == server.device_of[b["module"]]
    for dev in GROUPS:  # one batch at a time per device, in record order
        mine = [b for b in batches if b["device"] == dev]
        assert all(b["start_s"] >= a["end_s"] - 1e-9 for a, b in zip(mine, mine[1:]))
    assert set(s["overhead"]) <= set(SD.module_names)


def test_a_failing_device_stops_every_executor():
    server = PlacedSleepServer(fail_at=25)
    with pytest.raises(LiveError, match="while running .*OutOfMemoryError") as e:
        serve(make_policy("neustream", SD, TABLE, 3.0), server, _requests())
    assert len(e.value.run.batches) == 24


def test_idle_devices_end_the_run_when_the_trace_is_over():
    # requests far apart: each device waits for the other and for arrivals, then all stop
    rows = [{"id": i, "arrival_s": 0.05 * i, "steps": 30, "prompt_index": 0} for i in range(3)]
    run = serve(make_policy("neustream", SD, TABLE, 3.0), PlacedSleepServer(),
                to_requests(rows, SD, TABLE, 3.0))
    assert run.n_done == 3
    assert any(b["after_idle"] for b in run.batches)


def test_placement_parsing_and_bad_input():
    assert parse_placement("text_encoder=cuda:1, vae=cuda:1,unet=cuda:0") == {
        "text_encoder": "cuda:1", "vae": "cuda:1", "unet": "cuda:0"}
    assert parse_placement('{"unet": "cpu:1"}') == {"unet": "cpu:1"}
    assert parse_placement(None) == {}
    for bad in ("unet", "unet=", "{not json"):
        with pytest.raises(ValueError, match="placement"):
            parse_placement(bad)
    with pytest.raises(ValueError, match="placement: sd15-256 has no module.*dit"):
        DiffusionServer("sd15-256", {"text_encoder": 2, "unet": 2, "vae": 2},
                        placement={"dit": "cpu"})
    with pytest.raises(ValueError, match="placement of unet: 'gpu7' is not a torch device"):
        DiffusionServer("sd15-256", {"text_encoder": 2, "unet": 2, "vae": 2},
                        placement={"unet": "gpu7"})


# -- real tiny modules, two CPU executors -----------------------------------------------------

PLACED = {"text_encoder": "cpu:0", "vae": "cpu:0", "unet": "cpu:1"}
CAPS = {"text_encoder": 4, "unet": 4, "vae": 4}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _image(placement, moves=True):
    torch.manual_seed(0)  # the same random weights in every server
    server = DiffusionServer("sd15-256", CAPS, keep_outputs=True, seed=3, placement=placement)
    if not moves:
        server._moves = {}
    r = Request(id=0, arrival_s=0.0, deadline_s=1e9, steps=30, fields={"prompt_index": 2})
    run = serve(make_policy("neustream", SD, TABLE, 3.0), server, [r])
    assert run.n_ok == 1
    return server, server.outputs[0]


def test_placed_server_gives_the_same_image_as_one_device():
    one, want = _image(None)
    placed, got = _image(PLACED)
    assert one.groups() == {"cpu": ("text_encoder", "unet", "vae")}
    assert placed.groups() == {"cpu:0": ("text_encoder", "vae"), "cpu:1": ("unet",)}
    # text states go to the UNet's device, latents to the VAE's: nothing else moves
    assert placed._moves == {"text_encoder": [("text", "cpu:0", "cpu:1")],
                             "unet": [("latents", "cpu:1", "cpu:0")]}
    assert got.shape == want.shape and torch.equal(got, want)
    # without the moves the UNet and the VAE read rows nobody wrote: another image
    _, unmoved = _image(PLACED, moves=False)
    assert (unmoved - want).abs().max() > 1e-3


def test_placed_real_modules_serve_a_trace(tmp_path):
    policy = make_policy("neustream", SD, TABLE, 50.0)
    server = DiffusionServer("sd15-256", {m: policy.cap(m) for m in SD.module_names},
                             placement=PLACED, max_requests=8)
    rows = [{"id": i, "arrival_s": 0.02 * i, "steps": 30 + i, "prompt_index": i} for i in range(6)]
    requests = to_requests(rows, SD, TABLE, 50.0)
    s = serve_to_dir(tmp_path / "run", policy, server, requests, TABLE,
                     {"server": server.describe()})
    assert s["n_ok"] == 6 and not server.states and sorted(server.free) == list(range(1, 9))
    assert s["server"]["placement"] == PLACED
    batches = read_jsonl(tmp_path / "run" / BATCHES)
    assert {b["device"] for b in batches} == {"cpu:0", "cpu:1"}
    assert all(b["device"] == PLACED[b["module"]] for b in batches)


# -- the simulator serves a placement ----------------------------------------------------------

SPLIT = {"text_encoder": "gpu-a", "vae": "gpu-a", "unet": "gpu-b"}


def _sim(system="neustream", placement=None, rate=40.0, n=200):
    from neustream.engine.diffusion.sim import simulate

    return simulate(make_policy(system, SD, TABLE, 3.0), TABLE, _requests(rate, n),
                    placement=placement)


def test_simulated_placement_runs_devices_side_by_side_and_loses_nothing():
    run = _sim(placement=SPLIT)
    assert run.n_done == len(run.requests) == 200
    assert {b["device"] for b in run.batches} == {"gpu-a", "gpu-b"}
    for b in run.batches:
        assert b["device"] == SPLIT[b["module"]]
    for dev in ("gpu-a", "gpu-b"):  # one batch at a time per device
        mine = sorted((b for b in run.batches if b["device"] == dev), key=lambda b: b["start_s"])
        assert all(b["start_s"] >= a["end_s"] - 1e-12 for a, b in zip(mine, mine[1:]))
    a = [b for b in run.batches if b["device"] == "gpu-a"]
    b = [b for b in run.batches if b["device"] == "gpu-b"]
    assert any(x["start_s"] < y["end_s"] and y["start_s"] < x["end_s"] for x in a for y in b)
    for r in run.requests:  # every request went through every module in order, or was dropped
        assert r.status.terminal
    one = _sim()
    assert run.n_ok > one.n_ok  # the VAE off the UNet's device: more on time at this load


def test_a_placement_on_one_device_or_of_whole_requests_changes_nothing():
    def records(run):
        return [r.row() for r in run.requests], run.batches

    assert records(_sim(placement={m: "x" for m in SD.module_names})) == records(_sim())
    assert records(_sim("clockwork", placement=SPLIT)) == records(_sim("clockwork"))


def test_simulated_placement_names_unknown_modules():
    with pytest.raises(ValueError, match="placement: .* has no module.*decoder"):
        _sim(placement={"decoder": "gpu-a"})


# -- every tensor of a module on the module's own device ---------------------------------------


def _tensors(obj, path, seen, out, depth=0):
    """(path, device) of every tensor reachable from ``obj``: parameters, buffers, pools, inputs,
    scheduler tables."""
    if id(obj) in seen or depth > 4:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        out.append((path, obj.device))
    elif isinstance(obj, torch.nn.Module):
        out += [(f"{path}.{n}", t.device) for n, t in obj.named_parameters()]
        out += [(f"{path}.{n}", t.device) for n, t in obj.named_buffers()]
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _tensors(v, f"{path}[{k}]", seen, out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _tensors(v, f"{path}[{i}]", seen, out, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for k, v in vars(obj).items():
            _tensors(v, f"{path}.{k}", seen, out, depth + 1)


@pytest.mark.parametrize("workload", ["sd15-256", "dit-s2", "palette"])
def test_each_module_keeps_its_tensors_on_its_own_device(workload):
    """One module at a time on the meta device, the rest on the CPU: a tensor made without its
    module's device (the default device, another module's) shows up on the wrong one. Only the
    host staging rows of a call (pinned on a GPU) belong on the CPU."""
    from neustream.catalog.diffusion import get_program

    program = get_program(workload)
    for moved in program.module_names:
        server = DiffusionServer(workload, {m: 2 for m in program.module_names}, size="tiny",
                                 placement={moved: "meta"})
        for name, batcher in server.batchers.items():
            found: list = []
            _tensors(batcher, name, {id(s) for s in batcher._staging + batcher._sel}, found)
            want = "meta" if name == moved else "cpu"
            wrong = [(p, str(d)) for p, d in found if d.type != want]
            assert found and not wrong, (moved, wrong[:5])
        pools = {dev: {k: t.device.type for k, t in server.pools[dev].items()}
                 for dev in server.pools}
        assert all(t == dev.split(":")[0] for dev, p in pools.items() for t in p.values()), pools
