"""LLM policies side by side on the default sweeps: token goodput and attainment per point.

    python tests/benchmarks/bench_policies_llm.py [--only opt-13b,matplotagent] [--no-agent]

For every point of the default config's simulated LLM sweeps (config/config.yaml, ``llm.sim``:
OPT-13B on the H100 table, OPT-30B on the H200 table) it simulates each system on the committed
table and prints tokens on time per second and request attainment, then the mixed policy's
token goodput over max(vllm, neustream-llm) and its attainment less neustream-llm's. For the
agent pipelines (``agent.sim``) the same per LLM stage (tokens on time per second) and end to
end. A summary counts the points where the ratio is >= 1 and names the worst. Nothing is
written to the checkout (agent runs go to a temporary folder). About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from neustream.runs.spec import RunSpec

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = ("vllm", "neustream-llm", "neustream-mixed")
NEW, BASES = "neustream-mixed", ("vllm", "neustream-llm")


def points(spec: dict) -> list[tuple[str, float, float, float]]:
    """(sweep, rate, cv, slo) of a workload entry, each sweep through the default point."""
    d = spec["default"]
    out = []
    for sweep in ("rate", "cv", "slo"):
        for v in spec.get(sweep, []):
            p = {**d, sweep: v}
            out.append((sweep, float(p["rate"]), float(p["cv"]), float(p["slo"])))
    return out


def llm_point(workload: str, device: str, system: str, rate: float, cv: float, slo: float,
              requests: int) -> dict:
    from neustream.runs.llm import predict

    spec = RunSpec(workload=workload, system=system, rate=rate, cv=cv, slo=slo,
                   latency=ROOT / f"resources/latency/{device}/{workload}.csv", requests=requests)
    return predict(spec)


def agent_point(program: str, device: str, placement: str, system: str, rate: float, cv: float,
                slo: float, requests: int, tmp: Path) -> dict:
    import contextlib
    import io

    from neustream.runs.agent import simulate

    folder = ROOT / f"resources/latency/{device}"
    out = tmp / f"{program}-{placement}-{system}-{rate}-{cv}-{slo}"
    spec = RunSpec(workload=program, system=system, rate=rate, cv=cv, slo=slo, latency=folder,
                   exec_times=folder / "exec-times.csv", placement=placement, out=out,
                   requests=requests)
    with contextlib.redirect_stderr(io.StringIO()):
        return simulate(spec)


def ratio_line(goodput: dict, attainment: dict) -> tuple[float, float, str]:
    base = max(goodput[s] for s in BASES)
    r = goodput[NEW] / base if base > 0 else float("inf")
    da = attainment[NEW] - attainment["neustream-llm"]
    return r, da, f"{r:7.3f} {da:+7.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated workload labels")
    ap.add_argument("--no-agent", action="store_true")
    a = ap.parse_args()
    only = set(filter(None, a.only.split(",")))
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    ratios: list[tuple[float, str]] = []
    att: list[tuple[float, str]] = []

    head = " ".join(f"{s + ' tok/s':>21} {'att':>5}" for s in SYSTEMS)
    print(f"{'workload':10} {'sweep':5} {'rate':>5} {'cv':>4} {'slo':>4} {head} "
          f"{'new/max':>7} {'d att':>7}")
    llm = cfg["llm"]["sim"]
    for label, spec in llm["workloads"].items():
        if only and label not in only:
            continue
        n = spec.get("requests", llm.get("requests", 1000))
        for sweep, rate, cv, slo in points(spec):
            s = {sys: llm_point(label, spec["device"], sys, rate, cv, slo, n) for sys in SYSTEMS}
            gp = {k: v["token_goodput_tps"] for k, v in s.items()}
            at = {k: v["attainment"] for k, v in s.items()}
            r, da, tail = ratio_line(gp, at)
            where = f"{label} {sweep} rate={rate:g} cv={cv:g} slo={slo:g}"
            ratios.append((r, where))
            att.append((da, where))
            cols = " ".join(f"{gp[k]:21.1f} {at[k]:5.3f}" for k in SYSTEMS)
            print(f"{label:10} {sweep:5} {rate:5g} {cv:4g} {slo:4g} {cols} {tail}", flush=True)

    if not a.no_agent:
        ag = cfg["agent"]["sim"]
        with tempfile.TemporaryDirectory() as tmp:
            for label, spec in ag["workloads"].items():
                if only and label not in only:
                    continue
                program = spec.get("program", label)
                placement = spec.get("placement", "spread")
                n = spec.get("requests", ag.get("requests", 300))
                for sweep, rate, cv, slo in points(spec):
                    s = {sys: agent_point(program, spec["device"], placement, sys, rate, cv, slo,
                                          n, Path(tmp)) for sys in SYSTEMS}
                    stages = sorted(k for k in s[NEW] if k.startswith("tps_"))
                    where = f"{sweep} rate={rate:g} cv={cv:g} slo={slo:g}"
                    at = {k: v["attainment"] for k, v in s.items()}
                    print(f"\n{label} ({placement}) {sweep} rate={rate:g} cv={cv:g} slo={slo:g}: "
                          f"attainment " + ", ".join(f"{k} {at[k]:.3f}" for k in SYSTEMS))
                    for st in stages:
                        gp = {k: v[st] for k, v in s.items()}
                        r, _, _ = ratio_line(gp, at)
                        ratios.append((r, f"{label} {st} {where}"))
                        print(f"  {st:18} " + " ".join(f"{k} {gp[k]:8.1f}" for k in SYSTEMS)
                              + f"  new/max {r:6.3f}", flush=True)
                    att.append((at[NEW] - at["neustream-llm"], f"{label} {where}"))

    wins = sum(r >= 1 for r, _ in ratios)
    near = sum(0.99 <= r < 1 for r, _ in ratios)
    worst = min(ratios)
    print(f"\n{NEW} token goodput >= max({', '.join(BASES)}) at {wins} of {len(ratios)} points "
          f"(and within 1% at {near} more); worst {worst[0]:.3f} at {worst[1]}; "
          f"best {max(ratios)[0]:.3f} at {max(ratios)[1]}")
    ok = sum(d >= 0 for d, _ in att)
    print(f"attainment >= neustream-llm's at {ok} of {len(att)} points; worst {min(att)[0]:+.3f} "
          f"at {min(att)[1]}")


if __name__ == "__main__":
    main()
