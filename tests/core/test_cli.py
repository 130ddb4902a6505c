"""`neustream` verbs: outputs of a good run, one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from neustream.cli import main
from neustream.traces import make_trace, read_trace
from tests.support import read_jsonl, write_latency_csv, write_text

VERBS = ("trace", "simulate", "serve", "fidelity", "calibrate", "weights", "profile", "exec-times",
         "bound", "aggregate", "plot", "plot-batches", "model-dir", "server-overhead",
         "bench-serve")


def simulate_args(latency_csv, out_dir, **over):
    args = {"workload": "palette", "rate": "2", "cv": "2", "slo": "3", "system": "neustream",
            "requests": "40", "seed": "1", "latency": str(latency_csv), "out": str(out_dir)}
    args.update(over)
    argv = ["simulate"]
    for k, v in args.items():
        if v is not None:
            argv += [f"--{k.replace('_', '-')}", v]
    return argv


@pytest.mark.parametrize("system", ["neustream", "neustream-slack", "clockwork"])
def test_simulate_writes_the_run_directory(tmp_path, palette_csv, capsys, system):
    out = tmp_path / "runs" / system
    assert main(simulate_args(palette_csv, out, system=system, sweeps="rate,cv")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["batches.jsonl", "requests.jsonl", "summary.json"]
    s = json.loads((out / "summary.json").read_text())
    rows = read_jsonl(out / "requests.jsonl")
    assert len(rows) == s["n_requests"] == 40
    assert s["n_ok"] + s["n_late"] + s["n_dropped"] == 40
    assert (s["workload"], s["system"], s["backend"], s["device"]) == ("palette", system, "sim", "toydev")
    assert (s["rate"], s["cv"], s["slo"], s["seed"]) == (2.0, 2.0, 3.0, 1)
    assert s["sweeps"] == ["rate", "cv"]
    assert s["capacity_rps"] > 0 and s["goodput_rps"] >= 0
    assert read_jsonl(out / "batches.jsonl")
    err = capsys.readouterr().err
    assert f"palette {system}" in err and "on time" in err


def test_simulate_uses_the_given_trace(tmp_path, palette_csv, palette):
    trace = tmp_path / "trace.csv"
    assert main(["trace", "--workload", "palette", "--rate", "0.5", "--cv", "1",
                 "--requests", "12", "--seed", "4", "--out", str(trace)]) == 0
    rows = read_trace(trace, palette)
    assert rows == make_trace(palette, 0.5, 1.0, 12, 4)
    out = tmp_path / "run"
    # the run's labels are the trace's own (its sidecar says how it was drawn)
    assert main(simulate_args(palette_csv, out, trace=str(trace), rate="0.5", cv="1",
                              seed="4", requests=None)) == 0
    got = read_jsonl(out / "requests.jsonl")
    assert [(r["id"], r["arrival_s"], r["steps"]) for r in got] == [
        (r["id"], r["arrival_s"], r["steps"]) for r in rows]


def test_simulate_same_args_same_records(tmp_path, palette_csv):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(simulate_args(palette_csv, a, device="x")) == 0
    assert main(simulate_args(palette_csv, b, device="x")) == 0
    for name in ("requests.jsonl", "batches.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


BAD_TABLES = {
    "no_b1": ({"unet": {2: 0.02, 4: 0.03}}, "batch_size 1"),
    "no_module": ({"dit": {1: 0.02}}, "unet"),
}


def _bad_input(tmp_path, palette_csv, case):
    """argv overrides for each bad-input case, and a word the message must contain."""
    if case in BAD_TABLES:
        rows, needle = BAD_TABLES[case]
        return {"latency": str(write_latency_csv(tmp_path / f"{case}.csv", rows))}, needle
    if case == "bad_trace":
        t = write_text(tmp_path / "t.csv", "id,arrival_s,steps\n0,1.0,80\n1,0.5,80\n")
        return {"trace": str(t)}, "arrival_s"
    if case == "missing_trace":
        return {"trace": str(tmp_path / "nope.csv")}, "does not exist"
    if case == "missing_table":
        return {"latency": str(tmp_path / "nope.csv")}, "does not exist"
    return {
        "rate0": ({"rate": "0"}, "rate"),
        "rate_neg": ({"rate": "-1"}, "rate"),
        "cv0": ({"cv": "0"}, "cv"),
        "cv_neg": ({"cv": "-2"}, "cv"),
        "slo1": ({"slo": "1"}, "slo"),
        "slo_low": ({"slo": "0.5"}, "slo"),
        "workload": ({"workload": "imagen"}, "imagen"),
        "system": ({"system": "orca"}, "orca"),
        "requests0": ({"requests": "0"}, "requests"),
    }[case]


@pytest.mark.parametrize("case", [
    "rate0", "rate_neg", "cv0", "cv_neg", "slo1", "slo_low", "workload", "system",
    "no_b1", "no_module", "bad_trace", "missing_trace", "missing_table", "requests0",
])
def test_simulate_bad_input_one_line_exit_2(tmp_path, palette_csv, capsys, case):
    over, needle = _bad_input(tmp_path, palette_csv, case)
    out = tmp_path / "run"
    assert main(simulate_args(palette_csv, out, **over)) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("neustream simulate: error: ")
    assert "\n" not in err and "Traceback" not in err
    assert needle in err
    assert not (out / "summary.json").exists()


def test_unknown_system_lists_choices(tmp_path, palette_csv, capsys):
    assert main(simulate_args(palette_csv, tmp_path / "r", system="orca")) == 2
    err = capsys.readouterr().err
    assert all(s in err for s in ("neustream", "neustream-slack", "clockwork"))


def test_unknown_workload_lists_choices(tmp_path, palette_csv, capsys):
    assert main(simulate_args(palette_csv, tmp_path / "r", workload="imagen")) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in ("sd15-256", "palette", "dit-s2"))


def test_bad_input_as_a_process(tmp_path, palette_csv):
    p = subprocess.run([sys.executable, "-m", "neustream.cli", *simulate_args(
        palette_csv, tmp_path / "r", slo="0.9")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr and "slo" in p.stderr
    assert not (tmp_path / "r" / "summary.json").exists()


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out


def test_help_as_a_process():
    p = subprocess.run([sys.executable, "-m", "neustream.cli", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    listed = {line.split()[0] for line in p.stdout.splitlines() if line.startswith("    ")
              and not line.startswith("     ")}
    assert listed == set(VERBS)


def test_missing_verb_or_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["simulate", "--workload", "palette"])
    assert e.value.code == 2
    assert "required" in capsys.readouterr().err


def test_trace_verb_rejects_bad_rate(tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert main(["trace", "--workload", "palette", "--rate", "0", "--cv", "1",
                 "--out", str(out)]) == 2
    assert "rate" in capsys.readouterr().err
    assert not out.exists()


def test_aggregate_and_plot_verbs(tmp_path, palette_csv):
    runs = []
    for system in ("neustream", "clockwork"):
        for rate in ("1", "3"):
            out = tmp_path / "runs" / system / rate
            assert main(simulate_args(palette_csv, out, system=system, rate=rate, sweeps="rate")) == 0
            runs.append(out)
    listing = write_text(tmp_path / "list.txt", "\n".join(str(r / "summary.json") for r in runs[1:]))
    table = tmp_path / "tables" / "goodput.csv"
    assert main(["aggregate", str(runs[0] / "summary.json"), "--summary-list", str(listing),
                 "--out", str(table)]) == 0
    assert len(table.read_text().splitlines()) == 1 + 4
    png = tmp_path / "fig" / "palette_rate.png"
    assert main(["plot", "--table", str(table), "--workload", "palette", "--sweep", "rate",
                 "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    png2 = tmp_path / "fig" / "batches.png"
    assert main(["plot-batches", str(runs[0]), str(runs[2]), "--out", str(png2)]) == 0
    assert png2.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bound_verb_joins_the_goodput_table(tmp_path, palette_csv, capsys):
    import pandas as pd

    trace = tmp_path / "trace.csv"
    assert main(["trace", "--workload", "palette", "--rate", "3", "--cv", "2", "--requests", "40",
                 "--seed", "1", "--out", str(trace)]) == 0
    bound = tmp_path / "bounds" / "b.json"
    assert main(["bound", "--workload", "palette", "--latency", str(palette_csv), "--trace",
                 str(trace), "--slo", "3", "--out", str(bound)]) == 0
    b = json.loads(bound.read_text())
    assert b["n_requests"] == 40 and 0 < b["bound_requests"] <= 40
    assert "at most" in capsys.readouterr().err
    summaries = []
    for system in ("neustream", "neustream-slack", "clockwork"):
        out = tmp_path / "runs" / system
        assert main(simulate_args(palette_csv, out, system=system, trace=str(trace), rate="3",
                                  requests=None)) == 0
        summaries.append(str(out / "summary.json"))
    table = tmp_path / "goodput.csv"
    assert main(["aggregate", *summaries, "--bounds", str(bound), "--out", str(table)]) == 0
    df = pd.read_csv(table)
    assert (df.slo_bound_rps == b["bound_rps"]).all()
    assert (df.goodput_rps <= df.slo_bound_rps).all()
    # only diffusion workloads have one
    assert main(["bound", "--workload", "opt-13b", "--latency", str(palette_csv), "--trace",
                 str(trace), "--slo", "3", "--out", str(tmp_path / "x.json")]) == 2
    assert "for diffusion workloads" in capsys.readouterr().err


def test_aggregate_verb_without_summaries(tmp_path, capsys):
    assert main(["aggregate", "--out", str(tmp_path / "g.csv")]) == 2
    assert "no summary" in capsys.readouterr().err


def test_negative_seed_error_names_the_field(tmp_path, capsys):
    assert main(["trace", "--workload", "palette", "--rate", "1", "--cv", "1", "--seed", "-1",
                 "--out", str(tmp_path / "t.csv")]) == 2
    assert "seed" in capsys.readouterr().err


def test_profile_verb_writes_a_loadable_table(tmp_path):
    pytest.importorskip("torch")
    from neustream.catalog.diffusion import get_program
    from neustream.latency import LatencyTable

    out = tmp_path / "local" / "palette.csv"
    rc = main(["profile", "--workload", "palette", "--size", "tiny", "--max-batch", "2",
               "--repeats", "3", "--warmup", "0", "--out", str(out)])
    assert rc == 0
    table = LatencyTable.from_csv(out, get_program("palette"))
    assert table.max_batch("unet") == 2
    prov = json.loads(out.with_suffix(".json").read_text())
    assert prov["size"] == "tiny" and prov["command"].startswith("neustream profile")


def test_an_option_of_another_family_is_refused_naming_it(tmp_path, palette_csv, capsys):
    """One verb serves every family; an option the workload's family does not have is one
    line, not silently ignored."""
    argv = simulate_args(palette_csv, tmp_path / "r") + ["--pred-steps", "5"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("neustream simulate: error: --pred-steps does not apply to diffusion "
                   "workloads (palette); it is for llm, agent")
    argv = simulate_args(palette_csv, tmp_path / "r", workload="opt-tiny") + ["--step-delta", "0.9"]
    assert main(argv) == 2
    assert "--step-delta does not apply to llm workloads" in capsys.readouterr().err
    assert main(["profile", "--workload", "opt-tiny", "--size", "tiny", "--out",
                 str(tmp_path / "t.csv")]) == 2
    assert "--size is for diffusion workloads, not opt-tiny (llm)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "t.csv").exists()
