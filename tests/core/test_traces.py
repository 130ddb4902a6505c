"""Traces: Gamma arrivals, per-request fields, trace CSV round trip and validation."""

from __future__ import annotations

import numpy as np
import pytest

from neustream.traces import N_PROMPTS, TraceError, make_trace, read_trace, to_requests, write_trace
from tests.support import DIT, PALETTE, SD, write_text


def gaps(rows: list[dict]) -> np.ndarray:
    return np.diff([0.0] + [r["arrival_s"] for r in rows])


# -- arrival process ---------------------------------------------------------------


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("seed", [0, 7])
def test_gamma_gaps_have_requested_rate_and_cv(cv, seed):
    rate = 2.5
    g = gaps(make_trace(PALETTE, rate, cv, 20000, seed))
    assert len(g) == 20000
    assert (g >= 0).all()
    # The standard error of the CV estimate grows with the Gamma's kurtosis (6 cv^2).
    tol = 0.03 if cv <= 1 else 0.10
    assert g.mean() == pytest.approx(1 / rate, rel=tol)
    assert g.std() / g.mean() == pytest.approx(cv, rel=tol)


def test_cv_changes_burstiness():
    # Sanity check that cv is not ignored: same seed, different cv -> different gap spread.
    lo = gaps(make_trace(PALETTE, 1.0, 0.5, 5000, 3))
    hi = gaps(make_trace(PALETTE, 1.0, 4.0, 5000, 3))
    assert hi.std() > 4 * lo.std()


def test_same_seed_same_trace_other_seed_differs():
    a = make_trace(SD, 1.25, 2.0, 300, 11)
    b = make_trace(SD, 1.25, 2.0, 300, 11)
    c = make_trace(SD, 1.25, 2.0, 300, 12)
    assert a == b
    assert [r["arrival_s"] for r in a] != [r["arrival_s"] for r in c]
    assert [r["steps"] for r in a] != [r["steps"] for r in c]


@pytest.mark.parametrize("cv", [0.5, 2.0])
@pytest.mark.parametrize("rate", [0.3, 4.0])
def test_gaps_at_rate_r_are_unit_gaps_over_r(rate, cv):
    unit = gaps(make_trace(DIT, 1.0, cv, 500, 5))
    scaled = gaps(make_trace(DIT, rate, cv, 500, 5))
    np.testing.assert_allclose(scaled, unit / rate, rtol=1e-9, atol=1e-9)


def test_first_request_arrives_after_one_gap():
    rows = make_trace(PALETTE, 1.0, 1.0, 10, 0)
    assert rows[0]["arrival_s"] > 0
    assert [r["id"] for r in rows] == list(range(10))
    arrivals = [r["arrival_s"] for r in rows]
    assert arrivals == sorted(arrivals)


@pytest.mark.parametrize("program", [SD, DIT, PALETTE], ids=lambda p: p.name)
def test_request_fields_do_not_depend_on_rate_or_cv(program):
    def fields(rows):
        return [{k: v for k, v in r.items() if k != "arrival_s"} for r in rows]

    base = fields(make_trace(program, 1.0, 1.0, 400, 3))
    for rate, cv in [(0.2, 0.5), (3.0, 4.0), (1.0, 2.0)]:
        assert fields(make_trace(program, rate, cv, 400, 3)) == base


@pytest.mark.parametrize("program", [SD, DIT, PALETTE], ids=lambda p: p.name)
def test_steps_cover_the_inclusive_range(program):
    rows = make_trace(program, 1.0, 1.0, 5000, 1)
    lo, hi = program.steps
    steps = {r["steps"] for r in rows}
    assert min(steps) == lo and max(steps) == hi  # both ends are drawn
    assert steps == set(range(lo, hi + 1))


def test_workload_specific_fields():
    sd = make_trace(SD, 1.0, 1.0, 250, 0)
    assert [r["prompt_index"] for r in sd] == [i % N_PROMPTS for i in range(250)]
    assert "class_label" not in sd[0]
    dit = make_trace(DIT, 1.0, 1.0, 3000, 0)
    labels = [r["class_label"] for r in dit]
    assert 0 <= min(labels) and max(labels) <= 999 and len(set(labels)) > 900
    assert "prompt_index" not in dit[0]
    assert set(make_trace(PALETTE, 1.0, 1.0, 5, 0)[0]) == {"id", "arrival_s", "steps"}


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_make_trace_rejects_bad_rate(bad):
    with pytest.raises(ValueError, match="rate"):
        make_trace(PALETTE, bad, 1.0, 10, 0)


@pytest.mark.parametrize("bad", [0, -0.5, float("nan")])
def test_make_trace_rejects_bad_cv(bad):
    with pytest.raises(ValueError, match="cv"):
        make_trace(PALETTE, 1.0, bad, 10, 0)


def test_make_trace_rejects_no_requests():
    with pytest.raises(ValueError, match="requests"):
        make_trace(PALETTE, 1.0, 1.0, 0, 0)


# -- trace CSV ---------------------------------------------------------------------


@pytest.mark.parametrize("program", [SD, DIT, PALETTE], ids=lambda p: p.name)
def test_write_read_round_trip(tmp_path, program):
    rows = make_trace(program, 0.7, 2.0, 200, 9)
    path = tmp_path / "sub" / "trace.csv"
    write_trace(path, rows)
    assert path.read_text().splitlines()[0].startswith("id,arrival_s,steps")
    back = read_trace(path, program)
    assert back == rows  # floats are written with repr, so arrivals come back exactly
    assert not list(tmp_path.rglob("*.tmp"))


def _trace(tmp_path, body: str):
    return write_text(tmp_path / "bad.csv", body)


@pytest.mark.parametrize("body, needle", [
    ("id,steps\n0,80\n", "missing column(s) arrival_s"),
    ("id,arrival_s\n0,1.0\n", "missing column(s) steps"),
    ("id,arrival_s,steps\n0,abc,80\n", "non-numeric"),
    ("id,arrival_s,steps\n0,1.0,eighty\n", "non-numeric"),
    ("id,arrival_s,steps\n0,1.0,80\n1,0.5,80\n", "non-decreasing"),
    ("id,arrival_s,steps\n0,-1.0,80\n", ">= 0"),
    ("id,arrival_s,steps\n0,nan,80\n", "arrival_s"),
    ("id,arrival_s,steps\n0,1.0,80\n0,2.0,81\n", "duplicate id 0"),
    ("id,arrival_s,steps\n0,1.0,79\n", "steps 79 outside 80..99"),
    ("id,arrival_s,steps\n0,1.0,100\n", "steps 100 outside 80..99"),
    ("id,arrival_s,steps\n", "no requests"),
    ("", "missing column"),
])
def test_read_trace_rejects_malformed(tmp_path, body, needle):
    path = _trace(tmp_path, body)
    with pytest.raises(TraceError) as e:
        read_trace(path, PALETTE)
    msg = str(e.value)
    assert needle in msg
    assert str(path) in msg  # names the file
    assert "\n" not in msg  # one line


def test_read_trace_error_names_the_line(tmp_path):
    path = _trace(tmp_path, "id,arrival_s,steps\n0,1.0,80\n1,2.0,80\n2,1.5,80\n")
    with pytest.raises(TraceError, match=r"bad\.csv:4:"):
        read_trace(path, PALETTE)


def test_read_trace_missing_file(tmp_path):
    with pytest.raises(TraceError, match="does not exist"):
        read_trace(tmp_path / "nope.csv", PALETTE)


def test_read_trace_accepts_equal_arrivals(tmp_path):
    path = _trace(tmp_path, "id,arrival_s,steps\n0,1.0,80\n1,1.0,99\n")
    assert [r["steps"] for r in read_trace(path, PALETTE)] == [80, 99]


# -- requests with deadlines --------------------------------------------------------


def test_to_requests_deadlines_and_fields():
    from neustream.latency import LatencyTable

    table = LatencyTable({"text_encoder": {1: 0.5}, "unet": {1: 0.25}, "vae": {1: 1.0}})
    rows = [{"id": 3, "arrival_s": 2.0, "steps": 40, "prompt_index": 3}]
    (r,) = to_requests(rows, SD, table, slo=3.0)
    # stand-alone = 0.5 + 40 x 0.25 + 1.0 = 11.5 s
    assert r.deadline_s == pytest.approx(2.0 + 3.0 * 11.5)
    assert (r.id, r.arrival_s, r.steps, r.fields) == (3, 2.0, 40, {"prompt_index": 3})
    with pytest.raises(ValueError, match="slo"):
        to_requests(rows, SD, table, slo=0)


def test_make_trace_accepts_numpy_numbers():
    rows = make_trace(PALETTE, np.int64(2), np.float32(1.0), 20, 0)
    assert rows == make_trace(PALETTE, 2.0, 1.0, 20, 0)
