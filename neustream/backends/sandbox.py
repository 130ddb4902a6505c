"""Code execution for the multi-agent (MatPlotAgent) workload: run LLM-generated plotting code.

The agent pipeline's CPU stage takes the code an LLM wrote, runs it, and hands the plot it saved
(``novice.png``) to the vision model; when the code fails, a fallback image (the benchmark's ground
truth in the original) is copied in its place so the next stage always gets a picture. This module
is that stage's executor; the programs it runs are workload data (``neustream/catalog/plots/``),
and profiling/exec_times.py measures their run times for the simulator.

NOTE on the method: each run is a child ``python`` (``sys.executable``) with the request's
directory as working directory, HOME and TMPDIR, ``MPLBACKEND=Agg``, a shared matplotlib
config/cache directory built once (so no run pays for the font cache), one BLAS thread, a clean
environment, and resource limits (address space, CPU seconds, file size, processes, no core
files). Two layers keep it in its place:

- **bubblewrap** (Debian's ``bwrap``, when it runs here; ``isolation()`` says): the child runs in
  its own PID, network, IPC and UTS namespaces, in a new session, with the whole file system
  read-only but its work directory and the matplotlib cache, a private ``/tmp`` and its own
  ``/proc`` (the parent's processes and environment are out of sight). As root it also drops to
  the ``nobody`` user (root's home hidden but the interpreter), so the process-count limit
  applies. The time limit kills bwrap, whose namespace takes every descendant with it, a
  ``setsid``-ed fork included. None of this can be switched off from inside the interpreter.
- **an audit hook** (``sys.addaudithook``, set by a short prelude before the code runs with
  ``runpy``): ``PermissionError("[sandbox] blocked: ...")`` for writes, deletes, renames, mkdir,
  chmod and links outside the allowed directories, for sockets and for starting or signalling
  processes, so an accident in generated code fails with a clear message. Alone (no bwrap) it
  is best effort against accidents, not a boundary: ctypes or a C extension get around it, and
  the time limit then kills the child's process group only.

Success ("ok") means exit status 0 and a non-empty image file. The original artifact instead looked
for "Traceback"/"Error:" in the log and for the png; a program that prints a traceback it caught
and still saves its plot is "ok" here.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    pass

STATUSES = ("ok", "error", "timeout", "no_image", "blocked")
SCRIPT_NAME = "generated.py"  # not "code.py": the workdir is sys.path[0] and would shadow stdlib `code`
LOG_NAME = "generated.log"
BLOCKED_MARK = "[sandbox] blocked"
LOG_TAIL_CHARS = 4000
FSIZE_MB = 64
NPROC = 128  # tasks of the child's user (nobody, under bubblewrap as root): no fork bomb
NOBODY = 65534

# Runs inside the child before the generated code. Standard library only; it reads its settings
# from the NEUSTREAM_SANDBOX environment variable (JSON) and the code path from argv[1].
_PRELUDE = r'''
import json, os, sys
cfg = json.loads(os.environ.pop("NEUSTREAM_SANDBOX"))
_MARK = cfg["mark"]
try:
    import resource, signal
    def _limit(name, soft, hard):
        which = getattr(resource, name, None)
        if which is None:
            return
        cur_hard = resource.getrlimit(which)[1]
        if cur_hard != resource.RLIM_INFINITY:  # an unprivileged process cannot raise its hard limit
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(which, (soft, hard))
    mb = 1024 * 1024
    _limit("RLIMIT_AS", cfg["mem_mb"] * mb, cfg["mem_mb"] * mb)
    _limit("RLIMIT_CPU", cfg["cpu_s"], cfg["cpu_s"] + 1)  # SIGXCPU, then SIGKILL one second later
    _limit("RLIMIT_FSIZE", cfg["fsize_mb"] * mb, cfg["fsize_mb"] * mb)
    _limit("RLIMIT_CORE", 0, 0)
    _limit("RLIMIT_NPROC", cfg["nproc"], cfg["nproc"])  # counts every task of the user
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError, not a kill
except ImportError:  # no resource module (Windows): the wall-clock kill still applies
    pass

_ALLOW = [os.path.realpath(d) for d in cfg["allow"]]
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# event -> (path index, dir_fd index or None) of each path argument that gets changed
_PATH_EVENTS = {
    "os.remove": [(0, 1)], "os.rmdir": [(0, 1)], "os.mkdir": [(0, 2)], "os.chmod": [(0, 2)],
    "os.chown": [(0, 3)], "os.utime": [(0, 3)], "os.truncate": [(0, None)],
    "os.rename": [(0, 2), (1, 3)], "os.symlink": [(1, 2)], "os.link": [(1, 3)],
}
_PROCESS_EVENTS = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "os.fork", "os.forkpty", "os.killpg", "pty.spawn"}
_NET_EVENTS = {"socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
               "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg", "urllib.Request"}

def _resolve(path, dir_fd):
    if isinstance(path, int):
        return None  # an open file descriptor: it was checked when it was opened
    base = os.getcwd()
    if isinstance(dir_fd, int) and dir_fd >= 0:
        base = os.readlink("/proc/self/fd/%d" % dir_fd)
    return os.path.realpath(os.path.join(base, os.fsdecode(path)))

def _allowed(path):
    return path is None or path == "/dev/null" or any(
        path == d or path.startswith(d + os.sep) for d in _ALLOW)

def _deny(what):
    raise PermissionError("%s: %s" % (_MARK, what))

_WATCHED = frozenset({"open", "os.kill", *_PATH_EVENTS, *_PROCESS_EVENTS, *_NET_EVENTS})

def _guard(event, args):
    if event not in _WATCHED:  # most of the ~10k events of a matplotlib import: one set lookup
        return
    if event == "open":
        path, _mode, flags = args
        if (flags or 0) & _WRITE_FLAGS and not _allowed(_resolve(path, None)):
            _deny("write outside the work directory: %s" % (path,))
    elif event in _PATH_EVENTS:
        for i, j in _PATH_EVENTS[event]:
            p = _resolve(args[i], args[j] if j is not None else None)
            if not _allowed(p):
                _deny("%s outside the work directory: %s" % (event, p))
    elif event in _PROCESS_EVENTS:
        _deny("starting or signalling processes (%s)" % event)
    elif event == "os.kill" and args[0] != os.getpid():
        _deny("signalling another process (os.kill)")
    elif event in _NET_EVENTS:
        _deny("network access (%s)" % event)

sys.addaudithook(_guard)
import runpy
script = os.path.abspath(sys.argv[1])
sys.argv = [script]
sys.path[0] = os.path.dirname(script)
runpy.run_path(script, run_name="__main__")
'''


@dataclass(frozen=True)
class ExecResult:
    """What one run of generated code produced."""


    status: str  # one of STATUSES
    returncode: int | None  # child's exit status; negative = killed by that signal
    seconds: float  # wall time from process start to exit (or kill), measured by the parent
    image: Path | None  # the plot, or the fallback copy when the code failed; None when neither
    used_fallback: bool  # image is the fallback copy
    log: str  # the last LOG_TAIL_CHARS characters of the child's stdout+stderr
    isolation: str = "guard"  # "bubblewrap" or "guard" (the audit hook and limits alone)


# -------------------------------------------------------------------------------------------------
# code extraction

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(text: str) -> str:
    """Pull Python code out of an LLM reply; "" when there is none.

    Markdown fences win: all ```python (or ```py) blocks, joined; else all untagged blocks. A last
    block cut off by the token limit (no closing fence) is kept up to the end of the reply.
    Without fences, the artifact's heuristic: from the first line that starts with ``import`` or
    ``from`` to the last line that ends with ``)``.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_code needs a str, got {type(text).__name__}")
    blocks = _FENCE.findall(text)
    if blocks:
        tagged = [body for tag, body in blocks if tag.lower() in ("python", "py", "python3")]
        plain = [body for tag, body in blocks if not tag]
        chosen = tagged or plain
        if chosen:
            return "\n\n".join(b.strip("\n") for b in chosen).strip("\n") + "\n"
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith(("import ", "from "))), None)
    if start is None:
        return ""
    end = max((i for i, ln in enumerate(lines) if ln.rstrip().endswith(")")), default=-1)
    if end < start:
        return ""
    return "\n".join(lines[start:end + 1]) + "\n"


# -------------------------------------------------------------------------------------------------
# the executor

_mpl_dirs: dict[str, Path] = {}


def shared_mpl_dir() -> Path:
    """The matplotlib config/cache directory all runs share, with its font cache built once.

    ``$NEUSTREAM_MPLCONFIGDIR`` if set, else ``$XDG_CACHE_HOME/neustream/mplconfig`` (``~/.cache``).
    The font list is built here by one child the first time (about a second), not by every run.
    """
    root = os.environ.get("NEUSTREAM_MPLCONFIGDIR")
    if not root:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(cache) / "neustream" / "mplconfig")
    if root in _mpl_dirs:
        return _mpl_dirs[root]
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home: a per-user temp dir
        path = Path(tempfile.gettempdir()) / f"neustream-mplconfig-{os.getuid()}"
        path.mkdir(parents=True, exist_ok=True)
    if not any(path.glob("fontlist-*.json")):
        env = {**os.environ, "MPLCONFIGDIR": str(path), "MPLBACKEND": "Agg"}
        subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=300, check=False)
    _mpl_dirs[root] = path.resolve()
    return _mpl_dirs[root]


def _child_env(workdir: Path, mpl_dir: Path, cfg: dict) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str(mpl_dir),
        "PYTHONDONTWRITEBYTECODE": "1",  # no .pyc writes into site-packages (the guard would refuse)
        "PYTHONUNBUFFERED": "1",  # the log is complete even when the run is killed
        "PYTHONUSERBASE": site.getuserbase(),  # HOME moved: keep finding `pip install --user` packages
        "OMP_NUM_THREADS": "1",  # many runs share the host's cores; one BLAS thread each
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NEUSTREAM_SANDBOX": json.dumps(cfg),
    }
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


_isolation: list[str] = []


def isolation() -> str:
    """"bubblewrap" when ``bwrap`` runs here (namespaces; see the module NOTE), else "guard"."""
    if not _isolation:
        bwrap = shutil.which("bwrap")
        ok = False
        if bwrap:
            try:
                ok = subprocess.run([bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net",
                                     "--proc", "/proc", "--dev", "/dev", "true"],
                                    capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
        _isolation.append("bubblewrap" if ok else "guard")
    return _isolation[0]


def _interpreter_paths() -> list[str]:
    """Folders the child's interpreter reads (prefixes, its sys.path)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable)}
    paths |= {p for p in sys.path if p and os.path.isdir(p)}
    return sorted(os.path.realpath(p) for p in paths)


def _bwrap(writable: list[Path], workdir: Path) -> list[str]:
    """The bubblewrap command line a run's child starts under (module NOTE)."""
    cmd = [shutil.which("bwrap"), "--die-with-parent", "--new-session", "--unshare-pid",
           "--unshare-net", "--unshare-ipc", "--unshare-uts", "--ro-bind", "/", "/",
           "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    drop = os.geteuid() == 0
    home = os.path.realpath(Path.home())
    fresh = ["/tmp", home] if drop else ["/tmp"]  # empty file systems in the sandbox
    if drop:  # root's home hidden, but what the interpreter reads there
        cmd += ["--tmpfs", home]
    binds = [(p, "--ro-bind") for p in _interpreter_paths() if drop and _under(p, home)]
    binds += [(str(d), "--bind") for d in writable]
    # bwrap makes the folders on the way to a bind in a fresh file system 0700: make them
    # traversable first (the child may be `nobody`)
    ways = sorted({str(a) for p, _ in binds for a in Path(p).parents
                   if any(_under(str(a), f) for f in fresh)}, key=len)
    for way in ways:
        cmd += ["--perms", "0755", "--dir", way]
    for p, how in binds:
        cmd += [how, p, p]
    cmd += ["--chdir", str(workdir)]
    if drop:
        cmd += [shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                "--clear-groups", "--"]
    return cmd


def _under(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _give_to_nobody(folders: list[Path]) -> None:
    """As root under bubblewrap the child is ``nobody``: the folders it writes become its."""
    if os.geteuid() != 0:
        return
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(name, NOBODY, NOBODY)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def _wait_exit(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the child to exit; False on timeout. Wakes up the moment it exits.

    ``Popen.wait(timeout)`` polls with sleeps growing to 50 ms, which would add up to 50 ms to
    every measured time; a Linux pidfd (or, elsewhere, that polling) avoids it.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(timeout_s * 1000):
            return False
    finally:
        os.close(fd)
    proc.wait()
    return True


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * LOG_TAIL_CHARS))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text[-LOG_TAIL_CHARS:]


def run_code(code: str, workdir: str | os.PathLike, *, timeout_s: float = 10.0,
             image_name: str = "novice.png", fallback_image: str | os.PathLike | None = None,
             mem_mb: int = 2048, allowed_write_dirs: Iterable[str | os.PathLike] = (),
             data_files: Iterable[str | os.PathLike] = ()) -> ExecResult:
    """Run ``code`` in a sandboxed child ``python`` inside ``workdir`` and report the outcome.

    ``workdir`` (created if missing) is the request's own directory: the code is written there as
    ``generated.py``, its output goes to ``generated.log``, ``data_files`` are copied in first, and
    a stale ``image_name`` is removed so that only this run's plot counts. The child is killed
    (with everything it started) after ``timeout_s`` of wall time. When the run is not "ok" and
    ``fallback_image`` is given, the fallback is copied to ``workdir/image_name`` and returned.
    Safe to call from many threads at once (no ``preexec_fn``; limits are set by the child).
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if int(mem_mb) < 64:
        raise ValueError(f"mem_mb must be >= 64, got {mem_mb}")
    if not image_name or Path(image_name).name != image_name:
        raise ValueError(f"image_name must be a plain file name, got {image_name!r}")
    fallback = Path(fallback_image) if fallback_image is not None else None
    if fallback is not None and not fallback.is_file():
        raise ValueError(f"fallback_image is not a file: {fallback}")

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    for f in data_files:
        shutil.copy2(f, workdir / Path(f).name)
    image = workdir / image_name
    image.unlink(missing_ok=True)
    script = workdir / SCRIPT_NAME
    script.write_text(code)
    log_path = workdir / LOG_NAME

    mpl_dir = shared_mpl_dir()
    cfg = {
        "allow": [str(workdir), str(mpl_dir), *(str(Path(d).resolve()) for d in allowed_write_dirs)],
        "mem_mb": int(mem_mb),
        "cpu_s": int(timeout_s) + 2,  # CPU time <= wall time for one thread: the wall kill comes first
        "fsize_mb": FSIZE_MB,
        "nproc": NPROC,
        "mark": BLOCKED_MARK,
    }
    cmd = [sys.executable, "-c", _PRELUDE, str(script)]
    how = isolation()
    if how == "bubblewrap":
        writable = [workdir, mpl_dir, *(Path(d).resolve() for d in allowed_write_dirs)]
        _give_to_nobody(writable)
        cmd = _bwrap(writable, workdir) + cmd
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=workdir, env=_child_env(workdir, mpl_dir, cfg),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # own session and process group
        timed_out = not _wait_exit(proc, timeout_s)
        if timed_out:
            _kill_group(proc.pid)
            proc.wait()
        seconds = time.perf_counter() - t0
        _kill_group(proc.pid)  # anything the run left behind in its group
    text = _tail(log_path)

    rc = proc.returncode
    if how == "bubblewrap" and rc is not None and rc > 128:
        rc = 128 - rc  # bwrap reports the child's fatal signal as 128 + signal: as Popen does
    if timed_out or rc == -signal.SIGXCPU:  # wall limit, or the CPU-seconds limit
        status = "timeout"
    elif rc != 0:
        status = "blocked" if BLOCKED_MARK in text else "error"
    elif not (image.is_file() and image.stat().st_size > 0):
        status = "no_image"
    else:
        status = "ok"

    used_fallback = False
    if status != "ok":
        image.unlink(missing_ok=True)  # a half-written plot from a failed run does not count
        if fallback is not None:
            shutil.copyfile(fallback, image)
            used_fallback = True
    return ExecResult(status=status, returncode=rc, seconds=seconds,
                      image=image if status == "ok" or used_fallback else None,
                      used_fallback=used_fallback, log=text, isolation=how)


# -------------------------------------------------------------------------------------------------
# the shipped plotting programs


def blank_image(path: Path) -> Path:
    """A white 336 x 336 PNG: what a failed code stage hands on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(3.36, 3.36), dpi=100)
    fig.savefig(path)
    plt.close(fig)
    return path
