"""The workflow on a real one-node SLURM cluster, submitted through profiles/slurm.

The fixture starts munged, slurmctld and slurmd (Debian's munge and slurm-wlm) as
foreground processes it owns, on free loopback ports, with every file under a temp
folder, and stops them by their process ids at the end. The node has one fake GPU (a
gres.conf entry on a character device) so GPU rules schedule. Snakemake then submits each
job with sbatch through snakemake-executor-plugin-slurm, and the test checks the outputs
and what SLURM recorded for every job (state, GPUs, memory, time limit).

Pitfalls of one node without accounting, and what the test does about them:
- no slurmdbd, so `sacct` has nothing: the plugin is told `--slurm-status-command squeue`,
  and MinJobAge is a day so that finished jobs stay visible to squeue and scontrol;
- no accounts: no `slurm_account` resource, or the plugin validates it with sacctmgr and
  sshare, which fail; its own guess (sacct) fails fast and it submits without `-A`
  (`--slurm-no-account` says so too, though plugin 2.8 does not read it);
- the plugin's job step (snakemake-executor-plugin-slurm-jobstep 0.6) drops every SLURM_*
  variable, SLURM_CONF included, before its inner `srun`: on a real cluster srun then reads
  /etc/slurm/slurm.conf; here an `srun` wrapper first on PATH puts SLURM_CONF back, so the
  test touches nothing outside its temp folder and two runs can share a machine.

Needs root (slurmd runs jobs as root here) and the packages; .ci/run installs them. It is
skipped where they are missing, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.support import copy_workflow

NODE = "node1"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "srun", "sinfo")

# The small workflow: one workload, two systems, a rate sweep, and latency tables measured
# by the `profile` rule (tiny modules on the CPU) in a job that asks SLURM for a GPU.
CONFIG = """\
profile: {device: local, size: tiny, repeats: 1, warmup: 0, max_batch: 2}
diffusion:
  systems: [neustream, clockwork]
  sim:
    device: local
    requests: 20
    workloads:
      palette:
        default: {rate: 0.5, cv: 1, slo: 3}
        rate: [0.5, 1]
"""


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (slurmd runs the jobs as the submitting user, root here)"
    absent = [t for t in DAEMONS + CLIENTS if shutil.which(t) is None
              and not Path("/usr/sbin", t).exists()]
    if absent:
        return f"missing {', '.join(absent)} (apt-get install -y slurm-wlm munge)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "missing snakemake-executor-plugin-slurm (pip install -e '.[slurm]')"
    if importlib.util.find_spec("torch") is None:
        return "missing torch, which the profile rule runs (pip install torch -e '.[models]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Cluster:
    """munged + slurmctld + slurmd, all files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        cpus = os.cpu_count() or 1
        # slurmd drains a node that has less memory than configured.
        mem_mb = min(8000, int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9))
        for d in ("munge", "state", "spool", "log", "bin"):
            (root / d).mkdir(mode=0o700)
        key = root / "munge/munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.socket = root / "munge/munge.socket"
        # The fake GPU: a character device (gres.conf refuses plain files), here a copy of
        # /dev/null's numbers; nothing opens it.
        gpu = root / "nvidia0"
        try:
            os.mknod(gpu, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except OSError:
            gpu = Path("/dev/null")
        self.conf = root / "slurm.conf"
        host = socket.gethostname()
        self.conf.write_text(f"""\
ClusterName=neustream-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=86400
ReturnToService=2
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory={mem_mb} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")
        (root / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File={gpu}\n")
        srun = root / "bin/srun"
        srun.write_text(f"#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which('srun')} \"$@\"\n")
        srun.chmod(0o755)
        self.env = {**os.environ, "SLURM_CONF": str(self.conf),
                    "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}"}

    def start(self) -> None:
        r = self.root
        self._spawn("munged", [daemon("munged"), "--foreground", "--force", f"--socket={self.socket}",
                               f"--key-file={r}/munge/munge.key", f"--pid-file={r}/munge/munged.pid",
                               f"--seed-file={r}/munge/munged.seed", f"--log-file={r}/log/munged.log"])
        self._wait(lambda: self.socket.exists(), "munged to open its socket", 20)
        # -c: no saved state; -i: ignore what cannot be recovered.
        self._spawn("slurmctld", [daemon("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [daemon("slurmd"), "-D", "-N", NODE, "-f", str(self.conf)])
        self._wait(lambda: self.run("sinfo", "-h", "-n", NODE, "-o", "%T", check=False).stdout.strip()
                   in ("idle", "mixed", "allocated"), "the node to come up idle", 60)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.root / f"log/{name}.out", "w")
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

    def _wait(self, ready, what: str, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}:\n{self.logs()}")

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still holds (MinJobAge keeps finished ones): key -> value."""
        out = self.run("scontrol", "show", "job", "-d", "-o").stdout
        return [dict(re.findall(r"(\w[\w/:]*)=(\S*)", line)) for line in out.splitlines()
                if line.startswith("JobId=")]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                         for p in sorted((self.root / "log").glob("*")))

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--quiet", "-u", "root", check=False)
        for name in reversed(list(self.procs)):  # slurmd, slurmctld, munged
            p = self.procs[name]
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = missing_requirements()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"SLURM test cannot run in CI: {reason}")
        pytest.skip(reason)
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    copy_workflow(tmp_path)
    (tmp_path / "small.yaml").write_text(CONFIG)
    return tmp_path


def snakemake_on(cluster: Cluster, workdir: Path, *args: str, timeout_s: float = 900):
    cmd = [sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/slurm",
           "--configfile", "small.yaml", "--replace-workflow-config",
           # One node, no accounting (see the module docstring).
           "--slurm-status-command", "squeue", "--slurm-no-account",
           "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5",
           "--jobs", "4", "--cores", str(os.cpu_count()), *args]
    try:
        p = subprocess.run(cmd, cwd=workdir, env=cluster.env, capture_output=True, text=True,
                           timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"snakemake on SLURM timed out:\n{(e.stderr or b'')[-3000:]}\n"
                             f"{cluster.logs()}") from e
    return p


def planned_jobs(log: str) -> dict[str, int]:
    """Rule -> number of jobs, from the job-stats table Snakemake prints first."""
    table = log.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = (line.split() for line in table.splitlines())
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit()}


def planned_resources(log: str) -> dict[str, dict[str, str]]:
    """Rule -> the resources Snakemake printed for its jobs (one set per rule here)."""
    out = {}
    for rule, block in re.findall(r"^(?:local)?rule (\w+):\n(.*?)(?=^\S|\Z)", log, flags=re.M | re.S):
        m = re.search(r"^\s+resources: (.*)$", block, flags=re.M)
        if m:
            out[rule] = dict(kv.split("=", 1) for kv in m.group(1).split(", "))
    return out


@pytest.mark.slow
def test_small_workflow_on_slurm(cluster: Cluster, workdir: Path):
    t0 = time.monotonic()
    # The profile rule asks for a GPU only when it measures on CUDA; this run measures
    # tiny modules on the CPU but makes the job ask SLURM for the (fake) GPU all the same.
    p = snakemake_on(cluster, workdir, "--set-resources", "profile:gpu=1")
    slurm_logs = "\n".join(
        f.read_text()[-1500:] for f in (workdir / ".snakemake/slurm_logs").rglob("*.log")) \
        if p.returncode else ""
    assert p.returncode == 0, f"{p.stderr[-4000:]}\n{slurm_logs[-4000:]}\n{cluster.logs()}"
    took_s = time.monotonic() - t0

    # Outputs, as in a local run.
    table = pd.read_csv(workdir / "results/tables/goodput.csv")
    assert len(table) == 4 and set(table.system) == {"neustream", "clockwork"}
    assert (table.n_requests == 20).all() and set(table.device) == {"local"}
    assert (table.n_ok + table.n_late + table.n_dropped == table.n_requests).all()
    for name in ("palette_rate", "palette_batches"):
        assert (workdir / f"results/figures/{name}.png").stat().st_size > 10_000, name
    assert (workdir / "results/latency/local/palette.csv").is_file()

    # Every job went through SLURM, finished, and asked for what its rule declares.
    jobs = cluster.jobs()
    by_rule: dict[str, list[dict]] = {}
    for j in jobs:
        rule = re.match(r"rule_(\w+?)_wildcards|rule_(\w+)$", j["Comment"])
        by_rule.setdefault(rule.group(1) or rule.group(2), []).append(j)
    planned = planned_jobs(p.stderr)
    assert planned.pop("total") == len(jobs) + planned.pop("all")  # `all` runs in Snakemake
    assert {r: len(js) for r, js in by_rule.items()} == planned, [j["Comment"] for j in jobs]
    assert {"profile", "simulate", "aggregate"} <= set(planned)
    assert all(j["JobState"] == "COMPLETED" for j in jobs), [(j["Comment"], j["JobState"]) for j in jobs]
    resources = planned_resources(p.stderr)
    assert set(resources) == set(by_rule) | {"all"}, sorted(resources)
    for rule, res in resources.items():
        if rule == "all":
            continue
        minutes = int(res["runtime"])
        gpus = int(res.get("gpu", 0))
        assert gpus == (1 if rule == "profile" else 0), (rule, res)
        asked = {(j["MinMemoryNode"], j["TimeLimit"], j["JOB_GRES"]) for j in by_rule[rule]}
        assert asked == {(f"{res['mem_mb']}M", f"{minutes // 60:02d}:{minutes % 60:02d}:00",
                          f"gpu:{gpus}" if gpus else "(null)")}, (rule, res, asked)

    # Nothing left to do: a second run submits nothing.
    p = snakemake_on(cluster, workdir, "-n")
    assert "Nothing to be done" in p.stdout + p.stderr
    print(f"\nsmall workflow on SLURM: {len(jobs)} jobs in {took_s:.0f} s", file=sys.stderr)


def test_slurm_profile_plans_gpus_memory_and_time_per_rule(workdir: Path):
    """The cluster path without a cluster: `-n` through profiles/slurm. Measuring on CUDA
    makes `profile` a GPU job; every other rule is CPU-only; all declare memory and time."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("missing snakemake-executor-plugin-slurm (pip install -e '.[slurm]')")
    (workdir / "small.yaml").write_text(CONFIG.replace("size: tiny", "size: full, torch_device: cuda"))
    p = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--workflow-profile", "profiles/slurm",
                        "--configfile", "small.yaml", "--replace-workflow-config"],
                       cwd=workdir, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    resources = planned_resources(p.stdout)  # a dry run prints its plan on stdout
    assert set(resources) - {"all"} == set(planned_jobs(p.stdout)) - {"all", "total"}
    for rule, res in resources.items():
        if rule != "all":
            assert int(res["mem_mb"]) > 0 and int(res["runtime"]) > 0, (rule, res)
            assert int(res.get("gpu", 0)) == (rule == "profile"), (rule, res)
    assert resources["profile"]["mem_mb"] == "32000"  # full-size models
