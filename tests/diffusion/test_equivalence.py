"""Step-level batching is exact: a request served inside mixed batches (other requests at other
steps, other step counts, other classes, padded buckets) comes out as it does served alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neustream.backends.diffusion.nets import SD_SCHEDULE, _ddim_update
from neustream.backends.diffusion.server import DiffusionServer
from neustream.catalog.diffusion import PROGRAMS
from neustream.request import Request

WORKLOADS = ["sd15-256", "dit-s2", "palette"]


@pytest.fixture(scope="module", params=WORKLOADS)
def server(request):
    workload = request.param
    caps = {m.name: 8 for m in PROGRAMS[workload].modules}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steady on a shared CPU
    # pad: every batch runs in a bucket of the profiling grid, as CUDA graphs run it
    yield DiffusionServer(workload, caps, size="tiny", keep_outputs=True, pad=True, seed=7)
    torch.set_num_threads(threads)


def _request(id: int, steps: int, label: int = 0) -> Request:
    return Request(id=id, arrival_s=0.0, deadline_s=1.0, steps=steps,
                   fields={"prompt_index": id % 5, "class_label": label})


def _serve(server: DiffusionServer, schedule: list[list[Request]]) -> dict:
    """Run ``schedule`` (a list of batches); each request moves on by one call per batch.
    Returns id -> (final latents, output)."""
    program = server.program
    calls = {}  # request id -> (stage, calls done)
    finals = {}
    for batch in schedule:
        stages = {calls.setdefault(r.id, (0, 0))[0] for r in batch}
        assert len(stages) == 1, "a batch holds requests of one module"
        m = program.modules[stages.pop()]
        done = [calls[r.id][1] for r in batch]
        for r in batch:
            if r.id not in server.states:
                server.start(r)
        server.run(m.name, batch, done)
        for r in batch:
            stage, k = calls[r.id]
            k += 1
            if not m.loop or k == r.steps:
                if m.loop:
                    finals[r.id] = server.latents(r)
                stage, k = stage + 1, 0
            calls[r.id] = (stage, k)
            if stage == len(program.modules):
                server.end(r)
    return {i: (finals[i], server.outputs.pop(i)) for i in finals}


def _alone(r: Request, program) -> list[list[Request]]:
    return [[r] for m in program.modules for _ in range(r.steps if m.loop else 1)]


def _mixed(target: Request, others: list[Request], program) -> list[list[Request]]:
    """A schedule where ``target`` shares its loop calls with requests at other steps, in
    batches of changing size and order, and runs alone now and then."""
    rng = np.random.default_rng(0)
    loop_i = next(i for i, m in enumerate(program.modules) if m.loop)
    pre = [[r] for r in [target, *others] for _ in range(loop_i)]  # e.g. the text encoder
    # the others start earlier: they are several steps ahead when the target starts
    ahead = [[o] for o in others for _ in range(3 + o.id)]
    steps_left = {r.id: r.steps - (3 + r.id if r is not target else 0) for r in [target, *others]}
    batches = []
    while steps_left[target.id] > 0:
        live = [o for o in others if steps_left[o.id] > 0]
        pick = [o for o in live if rng.random() < 0.7]
        batch = [target, *pick] if rng.random() < 0.85 else [target]
        order = rng.permutation(len(batch))
        batch = [batch[i] for i in order]
        for r in batch:
            steps_left[r.id] -= 1
        batches.append(batch)
    tail = [[o] for o in others for _ in range(steps_left[o.id])]
    post = [[r] for r in [target, *others] for _ in range(len(program.modules) - loop_i - 1)]
    return pre + ahead + batches + tail + post


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_mixed_batches_give_the_same_result_as_alone(server):
    program = server.program
    lo, hi = program.steps
    target = _request(0, lo + 3, label=11)
    alone = _serve(server, _alone(target, program))[0]
    target2 = _request(0, lo + 3, label=11)
    others = [_request(1, hi, label=500), _request(2, lo + 7, label=999), _request(3, lo, label=3)]
    schedule = _mixed(target2, others, program)
    sizes = [len(b) for b in schedule]
    assert max(sizes) >= 3 and min(sizes) == 1
    mixed = _serve(server, schedule)
    for got, want in zip(mixed[0], alone):
        assert got.shape == want.shape
        assert _rel(got, want) < 1e-4, _rel(got, want)
    # ...while a request with another step count (another schedule) comes out different
    other = _serve(server, _alone(_request(0, lo + 4, label=11), program))[0]
    assert _rel(other[0], alone[0]) > 1e-2


def test_ddim_schedule_matches_diffusers():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    steps = 37
    sched.set_timesteps(steps)
    table = SD_SCHEDULE.table(steps)
    assert table[:, 0].astype(int).tolist() == sched.timesteps.tolist()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64)
    ours = x.clone()
    for k, t in enumerate(sched.timesteps):
        eps = torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64)
        x = sched.step(eps, t, x, eta=0.0).prev_sample
        params = torch.tensor([[*table[k], 0.0]], dtype=torch.float64)
        ours = _ddim_update(ours, eps, params).to(torch.float64)
    assert _rel(ours, x) < 1e-5
