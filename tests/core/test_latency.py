"""Latency tables: interpolation, CSV loading and validation, SLO arithmetic."""

from __future__ import annotations

import pytest

from neustream.latency import (
    LatencyTable,
    TableError,
    calls,
    capacity_rps,
    deadline_s,
    pipeline_s,
    remaining_s,
    standalone_s,
)
from tests.support import DIT, PALETTE, SD, make_request, write_latency_csv, write_text

SD_TABLE = {
    "text_encoder": {1: 0.5, 2: 0.75},
    "unet": {1: 0.25, 2: 0.375, 4: 0.5, 8: 1.0},
    "vae": {1: 1.0, 2: 1.5, 4: 2.0},
}


# -- lookups -------------------------------------------------------------------------


def test_exact_at_measured_points():
    t = LatencyTable(SD_TABLE)
    for module, by_size in SD_TABLE.items():
        for b, s in by_size.items():
            assert t.latency(module, b) == s


def test_linear_interpolation_between_measured_sizes():
    t = LatencyTable({"unet": {1: 1.0, 4: 2.5, 8: 4.5}})
    assert t.latency("unet", 2) == pytest.approx(1.5)
    assert t.latency("unet", 3) == pytest.approx(2.0)
    assert t.latency("unet", 5) == pytest.approx(3.0)
    assert t.latency("unet", 7) == pytest.approx(4.0)
    assert t.max_batch("unet") == 8


def test_unsorted_rows_are_sorted():
    t = LatencyTable({"unet": {4: 2.5, 1: 1.0}})
    assert t.latency("unet", 2) == pytest.approx(1.5)


@pytest.mark.parametrize("b", [0, -1, 9, 100])
def test_batch_outside_table_raises(b):
    t = LatencyTable({"unet": {1: 1.0, 8: 4.5}})
    with pytest.raises(ValueError, match="outside the table"):
        t.latency("unet", b)


def test_best_per_request_is_the_most_efficient_measured_size():
    t = LatencyTable({"unet": {1: 1.0, 4: 2.0, 8: 6.0}})
    assert t.best_per_request("unet") == pytest.approx(0.5)  # 2.0 / 4


def test_constructor_needs_batch_size_1_and_rows():
    with pytest.raises(TableError, match="'vae' has no batch_size 1"):
        LatencyTable({"unet": {1: 1.0}, "vae": {2: 1.0}})
    with pytest.raises(TableError, match="no rows"):
        LatencyTable({})


# -- CSV --------------------------------------------------------------------------------


def test_csv_round_trip_and_comment_lines(tmp_path):
    path = write_latency_csv(tmp_path / "t.csv", SD_TABLE, comment="device: toy")
    t = LatencyTable.from_csv(path, SD)
    assert set(t.modules) == set(SD_TABLE)
    assert t.latency("unet", 3) == pytest.approx(0.4375)
    assert t.source == str(path)
    out = tmp_path / "again.csv"
    t.to_csv(out)
    t2 = LatencyTable.from_csv(out)
    for module, by_size in SD_TABLE.items():
        for b in range(1, max(by_size) + 1):
            assert t2.latency(module, b) == t.latency(module, b)


def _csv(tmp_path, body):
    return write_text(tmp_path / "lat.csv", body)


@pytest.mark.parametrize("body, needle", [
    ("module,batch_size,latency_s\nunet,2,1.0\nunet,4,2.0\n", "has no batch_size 1"),
    ("module,latency_s\nunet,1.0\n", "missing column(s) batch_size"),
    ("module,batch_size\nunet,1\n", "missing column(s) latency_s"),
    ("batch_size,latency_s\n1,1.0\n", "missing column(s) module"),
    ("module,batch_size,latency_s\nunet,1,-0.5\n", "latency_s > 0"),
    ("module,batch_size,latency_s\nunet,1,0\n", "latency_s > 0"),
    ("module,batch_size,latency_s\nunet,1,inf\n", "latency_s > 0"),
    ("module,batch_size,latency_s\nunet,0,1.0\n", "batch_size >= 1"),
    ("module,batch_size,latency_s\nunet,1,1.0\nunet,1,1.1\n", "duplicate row for unet b=1"),
    ("module,batch_size,latency_s\nunet,one,1.0\n", "batch_size must be an integer"),
    ("module,batch_size,latency_s\nunet,1,fast\n", "latency_s a number"),
    ("module,batch_size,latency_s\n", "no rows"),
])
def test_from_csv_rejects_bad_tables(tmp_path, body, needle):
    path = _csv(tmp_path, body)
    with pytest.raises(TableError) as e:
        LatencyTable.from_csv(path)
    assert needle in str(e.value)
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_from_csv_error_names_the_line(tmp_path):
    path = _csv(tmp_path, "module,batch_size,latency_s\nunet,1,1.0\nunet,2,-1\n")
    with pytest.raises(TableError, match=r"lat\.csv:3:"):
        LatencyTable.from_csv(path)


def test_from_csv_missing_file(tmp_path):
    with pytest.raises(TableError, match="does not exist"):
        LatencyTable.from_csv(tmp_path / "nope.csv")


def test_check_names_missing_modules(tmp_path):
    path = write_latency_csv(tmp_path / "t.csv", {"unet": {1: 0.25}})
    t = LatencyTable.from_csv(path)  # fine without a program
    with pytest.raises(TableError, match="text_encoder, vae of workload sd15-256"):
        LatencyTable.from_csv(path, SD)
    with pytest.raises(TableError, match="no rows for module"):
        t.check(DIT)
    t.check(PALETTE)  # palette has only a unet


# -- SLO arithmetic ------------------------------------------------------------------------


def test_standalone_and_deadline_hand_case():
    t = LatencyTable(SD_TABLE)
    # te[1] + unet[1] x 40 + vae[1] = 0.5 + 10 + 1.0
    assert standalone_s(SD, t, 40) == pytest.approx(11.5)
    assert deadline_s(3.0, 2.5, 11.5) == pytest.approx(3.0 + 28.75)
    assert calls(SD, make_request(0, 0, 1, 40)) == [1, 40, 1]
    pal = LatencyTable({"unet": {1: 0.125, 2: 0.15625}})
    assert standalone_s(PALETTE, pal, 80) == pytest.approx(10.0)


def test_remaining_after_some_calls():
    t = LatencyTable(SD_TABLE)
    r = make_request(0, 0.0, 100.0, 40, module="text_encoder")
    assert remaining_s(SD, t, r) == pytest.approx(11.5)
    r.enter(1, "unet", 1.0)
    assert remaining_s(SD, t, r) == pytest.approx(11.0)  # 40 x 0.25 + 1.0
    r.calls_done = 10
    assert remaining_s(SD, t, r) == pytest.approx(8.5)  # 30 x 0.25 + 1.0
    r.calls_done = 40
    assert remaining_s(SD, t, r) == pytest.approx(1.0)
    r.enter(2, "vae", 12.0)
    assert remaining_s(SD, t, r) == pytest.approx(1.0)
    r.calls_done = 1
    assert remaining_s(SD, t, r) == pytest.approx(0.0)


def test_pipeline_seconds_use_the_batch_latency_of_every_module():
    t = LatencyTable(SD_TABLE)
    # b=2: te 0.75 + 30 x unet 0.375 + vae 1.5
    assert pipeline_s(SD, t, 30, 2) == pytest.approx(0.75 + 11.25 + 1.5)
    assert pipeline_s(SD, t, 30, 1) == pytest.approx(standalone_s(SD, t, 30))
    with pytest.raises(ValueError):
        pipeline_s(SD, t, 30, 3)  # te has no size past 2


def test_capacity_hand_case():
    t = LatencyTable(SD_TABLE)
    # best per request: te 0.75/2, unet 0.5/4, vae 2.0/4
    per_request = 0.375 + 40 * 0.125 + 0.5
    assert capacity_rps(SD, t, 40) == pytest.approx(1 / per_request)
    pal = LatencyTable({"unet": {1: 1.0, 4: 2.0}})
    assert capacity_rps(PALETTE, pal, 80) == pytest.approx(1 / 40)


def test_from_csv_error_line_counts_header_comments(tmp_path):
    # DESIGN allows a header comment saying how the table was measured.
    path = _csv(tmp_path, "# device: toy\n# dtype: fp32\nmodule,batch_size,latency_s\n"
                          "unet,1,1.0\nunet,2,-1\n")
    with pytest.raises(TableError, match=r"lat\.csv:5:"):  # the bad row is line 5 of the file
        LatencyTable.from_csv(path)
