"""The discrete-event core every simulator runs on: key order, tie-breaks, decisions, progress."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import pytest

from neustream.engine import events
from neustream.engine.events import Device, Kind, Simulator


@dataclass
class Arrival:
    name: str
    arrival_s: float


class Logger(Simulator):
    """Logs every event; each arrival asks for a decision, the decision starts a batch."""

    def __init__(self, arrivals, batch_s: float = 1.0):
        super().__init__(arrivals)
        self.device, self.batch_s = Device(), batch_s
        self.log: list[tuple] = []
        self.closed = False

    def handle(self, kind, payload):
        self.log.append((self.now_s, kind.name, getattr(payload, "name", payload)))
        if kind is Kind.ARRIVAL:
            self.wake(self.device)
        elif kind is Kind.DECIDE:
            self.push(self.now_s + self.batch_s, Kind.BATCH_END, "batch")
            self.device.busy = True
        else:
            self.device.busy = False

    def close(self):
        self.closed = True


def test_events_run_by_time_then_kind_then_insertion_order():
    sim = Logger([Arrival("a", 0.0), Arrival("b", 1.0), Arrival("c", 1.0)])
    sim.run()
    # At t=1 the batch started at 0 ends before b and c arrive (kind rank), b before c
    # (insertion), and the decision they ask for comes last, once, seeing both.
    assert sim.log == [(0.0, "ARRIVAL", "a"), (0.0, "DECIDE", 0),
                       (1.0, "BATCH_END", "batch"), (1.0, "ARRIVAL", "b"),
                       (1.0, "ARRIVAL", "c"), (1.0, "DECIDE", 0),
                       (2.0, "BATCH_END", "batch")]
    assert sim.closed and sim.n_events == 7


def test_a_busy_device_or_a_pending_decision_asks_for_no_second_one():
    sim = Logger([Arrival(str(i), 0.0) for i in range(5)])
    sim.run()
    assert [k for _, k, _ in sim.log].count("DECIDE") == 1


def test_a_simulator_keeps_its_own_ranking():
    class Agentish(Logger):
        class Kind(IntEnum):
            BATCH_END = 0
            EXEC_END = 1
            ARRIVAL = 2
            DECIDE = 3

        def handle(self, kind, payload):
            self.log.append((self.now_s, kind.name))
            if kind is self.Kind.ARRIVAL:
                self.push(self.now_s, self.Kind.EXEC_END)

    sim = Agentish([Arrival("a", 0.0), Arrival("b", 0.0)])
    sim.run()
    assert sim.log == [(0.0, "ARRIVAL"), (0.0, "EXEC_END"), (0.0, "ARRIVAL"), (0.0, "EXEC_END")]


def test_progress_is_reported_every_so_many_events(monkeypatch):
    monkeypatch.setattr(events, "PROGRESS_EVERY", 3)
    seen = []
    sim = Logger([Arrival(str(i), float(i)) for i in range(3)], batch_s=0.5)
    sim.run(progress=lambda s: seen.append((s.n_events, s.now_s)))
    assert seen == [(3, 0.5), (6, 1.5), (9, 2.5)]


def test_equal_keys_never_compare_payloads():
    # Payloads without an order (dicts) at the same time and kind: seq breaks the tie.
    sim = Logger([])
    for i in range(3):
        sim.push(1.0, Kind.BATCH_END, {"i": i})
    sim.run()
    assert [p for _, _, p in sim.log] == [{"i": 0}, {"i": 1}, {"i": 2}]
    with pytest.raises(TypeError):
        sorted([{"i": 0}, {"i": 1}])
