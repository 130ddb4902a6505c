"""The code sandbox against code that means harm: each case first switches the audit hook off
(as plain Python can, through the frames) or goes around it (ctypes), then tries one escape.
Bubblewrap's namespaces must hold anyway. These need ``bwrap`` (Debian's bubblewrap): skipped
where it is missing, failed in CI."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from neustream.backends.sandbox import NPROC, isolation, run_code

if isolation() != "bubblewrap":
    if os.environ.get("CI") == "true":
        pytest.fail("the sandbox tests need bubblewrap in CI (apt-get install bubblewrap)",
                    pytrace=False)
    pytest.skip("bubblewrap (bwrap) does not run here", allow_module_level=True)

# Plain Python reaching the prelude's globals and emptying the guard's watch list.
UNGUARD = """
import sys
f = sys._getframe()
while f.f_back is not None:
    f = f.f_back
f.f_globals["_WATCHED"] = frozenset()
"""


def run(tmp_path, body: str, timeout_s: float = 10.0):
    work = tmp_path / "work"
    r = run_code(UNGUARD + textwrap.dedent(body), work, timeout_s=timeout_s)
    return r, work


@pytest.fixture
def outside():
    """A folder outside the work folder that the sandbox sees (read-only): not under /tmp,
    which is the sandbox's own."""
    path = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="neustream-outside-"))
    path.chmod(0o777)  # anyone may write there: only the sandbox stands in the way
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_with_the_guard_off_nothing_outside_the_work_folder_is_written(tmp_path, outside):
    r, _ = run(tmp_path, f"""
        import ctypes, os, subprocess
        assert os.path.isdir("{outside}")  # seen, but read-only
        subprocess.run(["sh", "-c", "echo x > {outside}/by_shell"])
        ctypes.CDLL(None).system(b"echo x > {outside}/by_ctypes")
        fd = os.open("{outside}", os.O_RDONLY)
        try:
            os.close(os.open("by_dir_fd", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
        except OSError as e:
            print("dir_fd:", e)
        for target in ("/etc/neustream_escape", "/root/neustream_escape"):
            try:
                open(target, "w").write("x")
            except OSError as e:
                print(target, e)
        print("guard off")
        """)
    assert "guard off" in r.log, r.log
    assert list(outside.iterdir()) == []
    assert not os.path.exists("/etc/neustream_escape")
    assert not os.path.exists("/root/neustream_escape")


def test_a_setsid_grandchild_dies_with_the_time_limit(tmp_path):
    r, work = run(tmp_path, """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(2.5)
                open("late.txt", "w").write("outlived the limit")
            os._exit(0)
        time.sleep(30)
        """, timeout_s=1.0)
    assert r.status == "timeout"
    time.sleep(3)
    assert not (work / "late.txt").exists()


def test_processes_are_limited_and_the_parent_cannot_be_signalled(tmp_path):
    r, _ = run(tmp_path, f"""
        import ctypes, os, signal
        ctypes.CDLL(None).kill(os.getppid(), signal.SIGKILL)  # this side of the namespace only
        ctypes.CDLL(None).kill({os.getpid()}, signal.SIGKILL)  # the test runner's pid: not here
        n = 0
        try:
            for _ in range({2 * NPROC}):
                if os.fork() == 0:
                    import time
                    time.sleep(5)
                    os._exit(0)
                n += 1
        except OSError as e:
            print("fork refused after", n, e)
        """, timeout_s=4.0)
    assert "fork refused after" in r.log, r.log
    forks = int(r.log.split("fork refused after")[1].split()[0])
    assert forks < NPROC
    assert os.getpid()  # still here


def test_no_network_no_parent_environment_a_clean_one(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUSTREAM_TEST_SECRET", "s3cr3t-value")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    r, _ = run(tmp_path, f"""
        import glob, os, socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=2)
            print("connected")
        except OSError as e:
            print("no network:", e)
        seen = []
        for path in glob.glob("/proc/[0-9]*/environ"):
            try:
                seen.append(open(path, "rb").read())
            except OSError:
                pass
        print("secret seen" if any(b"s3cr3t-value" in s for s in seen) else "no secret")
        print("env:", sorted(os.environ))
        """)
    with pytest.raises(socket.timeout):
        listener.accept()
    listener.close()
    assert "no network:" in r.log and "connected" not in r.log, r.log
    assert "no secret" in r.log and "NEUSTREAM_TEST_SECRET" not in r.log, r.log
