"""Bad input and faults, as a careless or hostile user would give them: every case is one line
on stderr naming the field or file, an exit status that is not 0, no traceback, and nothing
served is lost or counted twice."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

from neustream import record
from neustream.cli import main
from neustream.record import FAILED_SUFFIX, REQUESTS, SUMMARY, read_jsonl
from tests.support import ROOT, write_latency_csv, write_text

H100 = ROOT / "resources/latency/h100"


def one_line(capsys, verb: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err, err
    assert err.startswith(f"neustream {verb}: error: "), err
    return err


def sim(tmp_path, *extra, workload="palette", latency=None, out=None):
    latency = latency or H100 / f"{workload}.csv"
    return ["simulate", "--workload", workload, "--system",
            "neustream" if workload == "palette" else "neustream-llm", "--latency", str(latency),
            "--rate", "1", "--cv", "1", "--slo", "3", "--requests", "20",
            "--out", str(out if out is not None else tmp_path / "run"), *extra]


# -- the run directory --------------------------------------------------------------------------


@pytest.mark.parametrize("out, said", [
    ("", "--out: give the run directory to write (got an empty path)"),
    ("a_file", "a file is there, not a run directory"),
    ("a_file/run", "cannot write there"),
    ("/proc/neustream/run", "cannot write there"),
])
def test_an_unusable_run_directory_is_refused_before_any_work(tmp_path, capsys, out, said):
    write_text(tmp_path / "a_file", "x")
    path = out if out in ("",) or out.startswith("/") else str(tmp_path / out)
    assert main(sim(tmp_path, out=path)) == 2
    assert said in one_line(capsys, "simulate")


def test_records_that_cannot_be_written_after_serving_are_kept_and_said_where(
        tmp_path, capsys, monkeypatch):
    real = record._write_lines

    def full_disk(path, rows):
        if ".tmp-" in str(path.parent):  # the run's own folder: no space left
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, rows)

    monkeypatch.setattr(record, "_write_lines", full_disk)
    assert main(sim(tmp_path)) == 1
    err = one_line(capsys, "simulate")
    kept = tmp_path / ("run" + FAILED_SUFFIX)
    assert "No space left on device" in err and str(kept) in err
    assert sorted(r["id"] for r in read_jsonl(kept / REQUESTS)) == list(range(20))
    assert not (kept / SUMMARY).exists() and not (tmp_path / "run").exists()


def test_a_rerun_replaces_the_previous_run_whole(tmp_path):
    assert main(sim(tmp_path)) == 0
    (tmp_path / "run" / "stale.txt").write_text("from the first run")
    assert main(sim(tmp_path, "--seed", "3")) == 0
    assert not (tmp_path / "run" / "stale.txt").exists()
    assert json.loads((tmp_path / "run" / SUMMARY).read_text())["seed"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging or old folder left


# -- option values ------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, said", [
    (("--seed", "-1"), "--seed must be an integer >= 0, got -1"),
    (("--step-delta", "1.5"), "--step-delta must be a number in (0, 1], got 1.5"),
    (("--rate", "nan"), "--rate must be a number > 0, got nan"),
])
def test_option_values_are_checked_the_same_way_for_every_family(tmp_path, capsys, extra, said):
    assert main(sim(tmp_path, *extra)) == 2
    assert said in one_line(capsys, "simulate")


def test_llm_options(tmp_path, capsys):
    assert main(sim(tmp_path, "--kv-tokens", "10", workload="opt-13b")) == 2
    assert "--kv-tokens 10: the KV cache must hold one request" in one_line(capsys, "simulate")
    argv = sim(tmp_path, workload="opt-13b")
    argv[argv.index("--slo") + 1] = "1"
    assert main(argv) == 2  # as for diffusion: a deadline of slo x the stand-alone time
    assert "--slo must be a number > 1, got 1.0" in one_line(capsys, "simulate")


def test_serve_and_profile_options(tmp_path, capsys):
    pytest.importorskip("torch")
    argv = ["serve", "--workload", "palette", "--system", "neustream", "--latency",
            str(H100 / "palette.csv"), "--rate", "1", "--cv", "1", "--slo", "3",
            "--threads", "-3", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "--threads must be an integer >= 0, got -3" in one_line(capsys, "serve")
    prof = ["profile", "--workload", "palette", "--size", "tiny", "--out", str(tmp_path / "t.csv")]
    assert main([*prof, "--device", "banana"]) == 2
    assert "--device banana: not a torch device" in one_line(capsys, "profile")
    assert main([*prof, "--max-batch", "-1"]) == 2
    assert "--max-batch must be >= 0, got -1" in one_line(capsys, "profile")
    assert not (tmp_path / "t.csv").exists()


def test_a_trace_is_used_under_its_own_labels(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    assert main(["trace", "--workload", "palette", "--rate", "2", "--cv", "1", "--requests",
                 "20", "--seed", "4", "--out", str(trace)]) == 0
    assert main(sim(tmp_path, "--trace", str(trace))) == 2  # rate 1 here
    assert ("--trace " + str(trace) + " was drawn with rate=2.0") in one_line(capsys, "simulate")
    ok = sim(tmp_path, "--trace", str(trace), "--seed", "4")
    ok[ok.index("--rate") + 1] = "2"
    assert main(ok) == 0


def test_trace_out_naming_a_folder(tmp_path, capsys):
    assert main(["trace", "--workload", "palette", "--rate", "1", "--cv", "1",
                 "--out", str(tmp_path)]) == 2
    assert "a folder, not a file" in one_line(capsys, "trace")
    assert [p.name for p in tmp_path.iterdir()] == []  # no .tmp left behind


# -- tables and summaries -----------------------------------------------------------------------


def table_case(tmp_path, name: str):
    """(latency table, what the error must say) for one kind of bad table of palette."""
    src = (H100 / "palette.csv").read_text().splitlines()
    rows = [src[0], *src[1:4]]
    if name == "another workload":
        path = tmp_path / "t" / "palette.csv"
        shutil.copy(H100 / "sd15-256.csv", path.parent.mkdir(parents=True) or path)
        (path.with_suffix(".json")).write_text(json.dumps({"workload": "sd15-256"}))
        return path, "measured for workload 'sd15-256' (its sidecar says)"
    if name == "sidecar":
        path = write_text(tmp_path / "t" / "palette.csv", "\n".join(rows) + "\n")
        path.with_suffix(".json").write_text(json.dumps({"workload": "dit-s2"}))
        return path, "measured for workload 'dit-s2' (its sidecar says), not 'palette'"
    if name == "huge batch":
        rows.append("unet,100000,0.5")
        return write_text(tmp_path / "t" / "palette.csv", "\n".join(rows) + "\n"), \
            "unet at batch size 100000, past its largest batch 32"
    if name == "falling":
        return write_latency_csv(tmp_path / "t" / "palette.csv",
                                 {"unet": {1: 0.02, 2: 0.019, 4: 0.005}}), \
            "latency must not fall as the batch grows"
    if name == "extra field":
        rows[2] += ",9"
        return write_text(tmp_path / "t" / "palette.csv", "\n".join(rows) + "\n"), \
            "3 fields expected, as the header has"
    if name == "unknown column":
        rows = [rows[0] + ",note"] + [r + ",x" for r in rows[1:]]
        return write_text(tmp_path / "t" / "palette.csv", "\n".join(rows) + "\n"), \
            "unknown column(s) note"
    raise AssertionError(name)


@pytest.mark.parametrize("case", ["another workload", "sidecar", "huge batch", "falling",
                                  "extra field", "unknown column"])
def test_a_table_is_checked_against_the_program_it_serves(tmp_path, capsys, case):
    path, said = table_case(tmp_path, case)
    assert main(sim(tmp_path, latency=path)) == 2
    err = one_line(capsys, "simulate")
    assert said in err and str(path) in err
    assert not (tmp_path / "run").exists()


def summary(tmp_path, name: str, **over) -> str:
    assert main(sim(tmp_path, out=tmp_path / name, *[a for k, v in over.items()
                                                      for a in (f"--{k}", str(v))])) == 0
    return str(tmp_path / name / SUMMARY)


@pytest.mark.parametrize("bad, said", [
    ("folder", "a folder, not a summary.json"),
    ("corrupt", "not a run summary (Expecting property name"),
    ("list", "not a run summary (a JSON object)"),
    ("no n_late", "not a run summary, no n_late"),
])
def test_aggregate_names_the_file_it_cannot_read(tmp_path, capsys, bad, said):
    good = summary(tmp_path, "good")
    path = tmp_path / "bad.json"
    if bad == "folder":
        path = tmp_path / "good"
    elif bad == "corrupt":
        path.write_text("{not json")
    elif bad == "list":
        path.write_text("[1, 2]")
    else:
        s = json.loads(open(good).read())
        del s["n_late"]
        path.write_text(json.dumps(s))
    capsys.readouterr()
    assert main(["aggregate", good, str(path), "--out", str(tmp_path / "g.csv")]) == 2
    err = one_line(capsys, "aggregate")
    assert str(path) in err and said in err
    assert not (tmp_path / "g.csv").exists()


def test_aggregate_counts_a_run_once(tmp_path, capsys):
    a = summary(tmp_path, "a")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    out = str(tmp_path / "g.csv")
    capsys.readouterr()
    assert main(["aggregate", a, a, "--out", out]) == 2
    assert f"{a} is given twice" in one_line(capsys, "aggregate")
    assert main(["aggregate", a, str(tmp_path / "copy" / SUMMARY), "--out", out]) == 2
    assert "are the same run" in one_line(capsys, "aggregate")
    b = summary(tmp_path, "b", seed=1)
    assert main(["aggregate", a, b, "--out", out]) == 0
    capsys.readouterr()


def test_plot_of_an_unrelated_csv(tmp_path, capsys):
    csv = write_text(tmp_path / "x.csv", "a,b\n1,2\n")
    assert main(["plot", "--table", str(csv), "--workload", "palette", "--sweep", "rate",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert f"{csv}: not a goodput table, no workload" in one_line(capsys, "plot")
